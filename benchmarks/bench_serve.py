"""How fast ``zeroseg serve`` answers on this CPU: its first page, and one prediction.

Starts ``zeroseg serve MODEL...`` in a fresh process ``--reps`` times and times, from just before
the process starts, the first HTTP 200 of its page. Then, in the last server, once its models
are loaded, sends the shipped world's validation image 0 (``--size`` px; 64 is the shipped
world's size) with the world's class names plus one new made-up name (so every request embeds a
vocabulary nobody has embedded before) through the page's own ``segment`` endpoint over HTTP
(``gradio_client``), ``--reps`` times, and times each answer. Prints the medians and every value.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_serve.py runs/demo [--reps 5]

Threads: whatever ``OMP_NUM_THREADS`` says (the server inherits it); say so with the figures.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(models: list[str]) -> tuple[subprocess.Popen, str, float, list[str]]:
    """A ``zeroseg serve`` process, its URL, and the seconds until its page answered."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "-m", "zeroseg.cli", "serve", *models, "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return proc, url, time.perf_counter() - t0, lines
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() - t0 > 120:
            proc.kill()
            raise SystemExit(f"zeroseg serve did not answer:\n{''.join(lines)}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="checkpoints or run directories for zeroseg serve")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--model", help="the model label to ask (default: the page's first)")
    args = ap.parse_args()

    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    from zeroseg.data.shapeworld import load_spec
    from zeroseg.data.shapeworld.render import render

    spec = load_spec(None)
    image = render(spec, "val", 0).image
    if image.shape[0] != args.size:
        image = np.asarray(Image.fromarray(image).resize((args.size, args.size), Image.NEAREST))
    png = Path(tempfile.mkdtemp(prefix="bench-serve-")) / f"val0-{args.size}px.png"
    Image.fromarray(image).save(png)

    pages = []
    for rep in range(args.reps):
        proc, url, seconds, lines = start(args.models)
        pages.append(seconds)
        if rep < args.reps - 1:
            stop(proc)
    try:
        deadline = time.perf_counter() + 300
        while not any("loaded in" in line for line in lines):
            if time.perf_counter() > deadline or proc.poll() is not None:
                raise SystemExit(f"the models did not load:\n{''.join(lines)}")
            time.sleep(0.2)
        client = Client(url, verbose=False)
        model = args.model
        if model is None:
            model = next(line for line in lines if "models:" in line).split("models: ")[1]
            model = model.split(";")[0].split(", ")[0]
        answers = []
        for _ in range(args.reps):
            names = [*spec.class_names, f"object {uuid.uuid4().hex[:8]}"]
            t = time.perf_counter()
            result = client.predict(
                handle_file(str(png)), ", ".join(names), model, api_name="/segment"
            )
            answers.append(time.perf_counter() - t)
            status = result[3]
            if not status.startswith(model):
                raise SystemExit(f"the server did not segment: {status}")
    finally:
        stop(proc)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    load = os.getloadavg()
    print(f"OMP_NUM_THREADS={threads}, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(
        f"first page after start: median {statistics.median(pages):.2f} s "
        f"({', '.join(f'{s:.2f}' for s in pages)})"
    )
    print(
        f"segment a {args.size}-px image ({len(names)} names, {model}), HTTP round trip: median "
        f"{statistics.median(answers):.2f} s ({', '.join(f'{s:.2f}' for s in answers)}); "
        f"the server's own timing of the last: {status}"
    )


if __name__ == "__main__":
    main()

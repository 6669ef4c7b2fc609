"""``zeroseg bench``: per method, inference ms/image, images/s and peak memory on this machine.

Each method is measured in its own subprocess (so peak RSS is that method's alone) from randomly
initialised weights at the size of its ShapeWorld preset: inference cost does not depend on the
weights' values. Figures are medians over repeated runs after a warm-up.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch


def median_seconds(fn, repeats: int, *, warmup: int = 0) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``fn``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_one(method: str, world: str | None = None, batch: int = 16, repeats: int = 10) -> dict:
    """Measures one method in this process (call through :func:`run_bench` for clean memory)."""
    from zeroseg.data.shapeworld import load_spec
    from zeroseg.demo import demo_config
    from zeroseg.runner import build_method

    cfg = demo_config(method, world=world, quick=False)
    spec = load_spec(cfg.data.world)
    split = spec.class_split()
    dim = 384
    model = build_method(cfg, split, dim).eval()
    emb = torch.nn.functional.normalize(torch.randn(split.num_classes, dim), dim=-1)
    seen = split.seen_mask()
    s = spec.image_size
    g = torch.Generator().manual_seed(0)
    one = torch.randint(0, 256, (1, 3, s, s), dtype=torch.uint8, generator=g)
    many = torch.randint(0, 256, (batch, 3, s, s), dtype=torch.uint8, generator=g)
    row = {
        "method": method,
        "image_size": s,
        "classes": split.num_classes,
        "threads": torch.get_num_threads(),
    }
    with torch.no_grad():
        for _ in range(3):
            model.scores(one, emb, seen)
        row["ms_per_image"] = median_seconds(lambda: model.scores(one, emb, seen), repeats) * 1000
        model.scores(many, emb, seen)
        row["images_per_s"] = batch / median_seconds(
            lambda: model.scores(many, emb, seen), max(3, repeats // 3)
        )
    row.update(model.bench_extra(spec))
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def run_bench(methods: Sequence[str] | None = None, world: str | None = None) -> list[dict]:
    from zeroseg.demo import DEMO_PRESETS

    methods = list(methods or DEMO_PRESETS)
    rows = []
    print(f"{'method':<14} {'ms/image':>9} {'images/s':>9} {'peak MB':>8}  extra")
    for m in methods:
        if m not in DEMO_PRESETS:
            raise ValueError(f"unknown method {m!r}; valid: {sorted(DEMO_PRESETS)}")
        cmd = [sys.executable, "-m", "zeroseg.bench", m] + ([world] if world else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            raise RuntimeError(f"bench of {m} failed:\n{proc.stderr[-2000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        extra = {
            k: v
            for k, v in row.items()
            if k
            not in {
                "method",
                "ms_per_image",
                "images_per_s",
                "peak_rss_mb",
                "image_size",
                "classes",
                "threads",
            }
        }
        extra_s = ", ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()
        )
        print(
            f"{m:<14} {row['ms_per_image']:>9.2f} {row['images_per_s']:>9.1f} {row['peak_rss_mb']:>8.0f}  {extra_s}"
        )
    return rows


if __name__ == "__main__":
    print(json.dumps(bench_one(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)))


def bench_presets(
    presets: Sequence[str] | None = None, *, crop: int = 128, batch_size: int = 2, iters: int = 4
) -> list[dict]:
    """Per-iteration training cost of each paper preset on this CPU at a reduced crop and batch.

    Each preset trains ``iters`` steps, with its own architecture and schedule settings, on a tiny
    dataset written in its dataset's real layout (``zeroseg.data.real.fixtures``), through the same
    code path a GPU run takes; the first step (warm-up) is left out of the timing. ``full_size_est``
    scales the measured seconds by pixels and batch to the preset's own crop and batch size: a
    rough figure for planning (attention grows faster than pixels), not a measurement.
    """
    import csv
    import tempfile

    import yaml

    from zeroseg import runner
    from zeroseg.config import PRESET_DIR, load_config
    from zeroseg.data.real.fixtures import WRITERS

    rows = []
    names = presets or [
        p.stem
        for p in sorted(PRESET_DIR.glob("*.yaml"))
        if (yaml.safe_load(p.read_text()).get("data") or {}).get("dataset", "shapeworld")
        != "shapeworld"
    ]
    print(f"{'preset':<48} {'s/iter':>8} {'at':>12} {'est. s/iter full size':>22}")
    for name in names:
        base = load_config(name)
        # The strict protocol leaves one training image of a fixture (the other has unseen pixels).
        batch = 1 if base.data.protocol == "strict" else batch_size
        # No pretrained file is on this machine: random initialisation, the same compute.
        offline = [
            f"model.{key}=null"
            for key in ("pretrained", "pretrained_backbone")
            if base.model.get(key)
        ]
        # Every stage the method declares (generator, classifier, self-training...) runs
        # ``iters`` steps too, with at most ``batch`` samples (a fixture holds two images).
        stages = []
        for stage in runner.method_class(base).stages:
            if stage.schedule == "train":
                continue  # set below with the rest of the experiment's schedule
            at = f"stages.{stage.name}"
            stages += [f"{at}.iters={iters}", f"{at}.log_every=1", f"{at}.ckpt_every=0"]
            if runner.stage_schedule(base, stage).batch_size > batch:
                stages.append(f"{at}.batch_size={batch}")
        with tempfile.TemporaryDirectory() as tmp:
            # two more training images: one is held out as val, batches need two
            root = WRITERS[base.data.dataset](Path(tmp) / base.data.dataset, extra_train=2)
            text = ["text.encoder=minilm"]
            if base.method.startswith("zegclip"):
                # CLIP's text width must match its image encoder: a random CLIP of the preset's
                # architecture stands in for the OpenAI file, for both towers.
                from zeroseg.models.backbones.clip import CLIP
                from zeroseg.models.pretrained import save_clip_safetensors

                ckpt = Path(tmp) / "clip-random.safetensors"
                save_clip_safetensors(CLIP.from_config(base.model["encoder"]), ckpt)
                text = [f"text.encoder=clip:{ckpt}", f"model.pretrained={ckpt}"]
                offline = [o for o in offline if not o.startswith("model.pretrained=")]
            cfg = runner.load_experiment(
                name,
                [
                    f"data.root={root}",
                    f"data.crop_size={crop}",
                    f"train.iters={iters}",
                    f"train.batch_size={batch}",
                    "train.log_every=1",
                    "train.ckpt_every=0",
                    *text,
                    *offline,
                    *stages,
                ],
            )
            runner.train(cfg, Path(tmp) / "run", progress=False)
            logs = sorted(Path(tmp).rglob("log.csv"))  # run and shared stages
            per_stage = {}
            for log in logs:  # every stage of the method
                with open(log) as f:
                    elapsed = [float(r["elapsed_s"]) for r in csv.DictReader(f)]
                diffs = [b - a for a, b in zip(elapsed, elapsed[1:])]
                if diffs:
                    per_stage[log.parent.name] = statistics.median(diffs)
            # The headline is the costliest stage (a segmenter, not a GMMN step); all are in the row.
            s_iter = max(per_stage.values()) if per_stage else float("nan")
        scale = (base.data.crop_size / crop) ** 2 * (base.train.batch_size / batch)
        row = {
            "preset": name,
            "s_per_iter": s_iter,
            "crop": crop,
            "batch": batch,
            "full_size_est_s_per_iter": s_iter * scale,
            "paper_iters": base.train.iters,
            "stages_s_per_iter": per_stage,
        }
        rows.append(row)
        print(f"{name:<48} {s_iter:>8.3f} {f'{crop}px x{batch}':>12} {s_iter * scale:>22.1f}")
    return rows

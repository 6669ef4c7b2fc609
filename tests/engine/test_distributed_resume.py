"""Two-process DDP equals one process; a SIGKILLed run resumes to identical weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as td
import torch.multiprocessing as mp  # noqa: F401 - fork context below

from zeroseg.engine.checkpoint import load_checkpoint

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _tiny_run  # noqa: E402


def _worker(rank: int, world: int, out: str, port: int) -> None:  # one DDP rank
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    td.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _tiny_run.run(Path(out), iters=20, ckpt_every=0)
    finally:
        td.destroy_process_group()


def _final(path: Path) -> dict:
    return load_checkpoint(path / "final.safetensors")[0]


def test_two_process_ddp_matches_one_process(tmp_path, monkeypatch):
    # Dropout draws differ per rank, so the comparison model has none; everything else is the
    # same global batch of 8 (2 x 4) with gradients averaged across ranks.
    monkeypatch.setattr(
        _tiny_run,
        "model_fn",
        lambda: (
            torch.manual_seed(0),
            torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)),
        )[1],
    )
    torch.set_num_threads(1)
    single = tmp_path / "single"
    _tiny_run.run(single, iters=20, ckpt_every=0)
    port = 30500 + os.getpid() % 1000
    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(target=_worker, args=(r, 2, str(tmp_path / "ddp"), port)) for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    a, b = _final(single), _final(tmp_path / "ddp")
    for k in a:
        # Tolerance: float summation order differs between one batch of 8 and two of 4.
        assert torch.allclose(a[k], b[k], atol=1e-5), (k, (a[k] - b[k]).abs().max())


def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    script = str(HERE / "_tiny_run.py")
    subprocess.run(
        [sys.executable, script, str(tmp_path / "full")], check=True, env=env, timeout=120
    )

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, script, str(out), "0.05"], env=env)
    deadline = time.time() + 60
    while not (out / "step-0000010.safetensors").exists():
        assert time.time() < deadline and proc.poll() is None, "the run never wrote a checkpoint"
        time.sleep(0.02)
    time.sleep(0.12)  # a few steps past the checkpoint: those are lost and redone
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final.safetensors").exists()
    subprocess.run([sys.executable, script, str(out)], check=True, env=env, timeout=120)
    a, b = _final(tmp_path / "full"), _final(out)
    for k in a:
        assert torch.equal(a[k], b[k]), k

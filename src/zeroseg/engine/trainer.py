"""The one training loop every method's stages run through.

``train_stage`` owns seeding, the optimiser and learning-rate schedule, bf16/fp16 autocast,
gradient clipping, the protocol guard, NaN/Inf detection, progress bars, CSV + TensorBoard logs,
atomic step checkpoints with a kept count, exact resume (model, optimiser, RNG; data order is a
function of the step, see ``zeroseg.data.loader``) and distributed gradient synchronisation.
A method supplies only ``step_fn(model, batch) -> {"loss": ..., other scalars}``.
"""

from __future__ import annotations

import contextlib
import csv
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from zeroseg.data.classes import ClassSplit
from zeroseg.data.protocol import assert_seen_only
from zeroseg.engine import distributed as dist
from zeroseg.engine.checkpoint import (
    CheckpointError,
    _atomic_write,
    list_checkpoints,
    load_checkpoint,
    load_state_dict_strict,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from zeroseg.engine.lock import LOCK, hold_lock


@dataclass
class TrainConfig:
    """One training stage's schedule."""

    iters: int = 1000  # optimisation steps
    batch_size: int = 16  # global batch size (split over distributed ranks)
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9  # sgd only
    scheduler: str = "poly"  # poly (power 0.9, as DeepLab) | cosine | constant
    warmup_iters: int = 0  # linear warm-up steps
    amp: str = "none"  # none | bf16 | fp16 (fp16 only on CUDA) | auto (see resolve_amp)
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    log_every: int = 25  # CSV/TensorBoard interval (steps)
    ckpt_every: int = 0  # step-checkpoint interval; 0 = by wall time only
    # Also checkpoint when this many minutes passed since the last one (0 = by steps only), so a
    # kill loses at most a few minutes of any stage; the write is atomic and off the hot path.
    ckpt_minutes: float = 5.0
    keep_ckpts: int = 2  # step checkpoints kept per stage
    seed: int = 0
    # Convolution weights in channels-last (NHWC) layout while the stage trains (back to the usual
    # layout for the saved weights and inference). On this CPU oneDNN's NHWC kernels made some
    # presets' steps faster and others slower, and they round differently, so turning it on
    # changes trained figures (docs/benchmarks.md, "Convolutions in channels-last layout").
    channels_last: bool = False
    # An exponential moving average of the weights (0: off, the weights as trained). When set,
    # every step after the optimiser's updates the average (every floating-point entry of the
    # model's state: parameters and buffers such as norm statistics) with the decay warmed up as
    # min(ema_decay, (1 + step) / (10 + step)), so the first steps do not weigh the random start;
    # the stage's saved weights are the average. Step checkpoints carry it (exact resume).
    ema_decay: float = 0.0


# Observers of training steps (benchmarks, profilers): each is called as
# ``hook(stage, step, batch, cfg)`` and returns a context manager entered around the whole step
# (forward, backward, optimiser step). Registered through :func:`step_hooks` only.
StepHook = Callable[[str, int, object, "TrainConfig"], AbstractContextManager]
_STEP_HOOKS: list[StepHook] = []


@contextmanager
def step_hooks(*hooks: StepHook) -> Iterator[None]:
    """Every training step run inside the ``with`` block is wrapped in each hook's context.

    ``zeroseg bench --train`` times steps and counts their FLOPs this way; training itself is
    unchanged (the hooks see the step, they do not alter it).
    """
    _STEP_HOOKS.extend(hooks)
    try:
        yield
    finally:
        for hook in hooks:
            _STEP_HOOKS.remove(hook)


def _enter_step_hooks(stage: str, step: int, batch: object, cfg: TrainConfig) -> ExitStack:
    stack = ExitStack()
    for hook in list(_STEP_HOOKS):
        stack.enter_context(hook(stage, step, batch, cfg))
    return stack


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or Inf; the message names the step, the batch and the last checkpoint."""


def lr_factor(cfg: TrainConfig, step: int) -> float:
    if cfg.warmup_iters and step < cfg.warmup_iters:
        return (step + 1) / cfg.warmup_iters
    t = min(1.0, (step - cfg.warmup_iters) / max(1, cfg.iters - cfg.warmup_iters))
    if cfg.scheduler == "poly":
        return (1 - t) ** 0.9
    if cfg.scheduler == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.scheduler == "constant":
        return 1.0
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}; valid: poly, cosine, constant")


def scaled_lr_groups(
    params: Iterable, part: torch.nn.Module, lr: float, mult: float
) -> list[dict] | None:
    """``params`` (a stage's parameters) as optimiser groups for :func:`build_optimizer`: those
    outside ``part`` at ``lr``, ``part``'s (a pretrained backbone) at ``lr * mult``, left out when
    ``mult`` is 0 (frozen); None, one group at ``lr``, when ``mult`` is 1."""
    if mult == 1:
        return None
    inside = {id(p) for p in part.parameters()}
    params = list(params)
    groups = [{"params": [p for p in params if id(p) not in inside], "lr": lr}]
    if mult > 0:
        groups.append({"params": [p for p in params if id(p) in inside], "lr": lr * mult})
    return groups


def build_optimizer(params: Iterable, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over ``params``: parameters, or optimiser groups (dicts with ``params`` and
    their own ``lr``); parameters that need no gradient are left out."""
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        params = [g for g in groups if g["params"]]
    else:
        params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters in this stage")
    # The multi-tensor implementations: fewer per-parameter dispatches than torch's CPU default
    # (a Python loop over the parameters), with bit-identical updates (tests/engine/
    # test_optimizer_numerics.py). The fused CPU kernels are faster still but round differently
    # (AdamW's weights by ~3e-8, SGD's momentum buffers by an ulp), so they are not used: they
    # would change training results.
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True
        )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: adamw, sgd")


def resolve_amp(amp: str, device: torch.device) -> str:
    """``amp`` with ``auto`` resolved: bf16 where ``device`` multiplies bf16 natively, else none.

    Natively: a CUDA GPU that supports bf16, or a CPU with AMX-BF16 or AVX512-BF16. Elsewhere
    bf16 autocast is emulated and slower than fp32 (a ShapeWorld training step took 2x as long on
    a CPU with AVX-512 but neither), so ``auto`` trains in fp32 there. The two precisions give
    different numbers: a run's log and report say which one ``auto`` became.
    """
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    if device.type == "cpu":
        from zeroseg.report import native_bf16_cpu

        return "bf16" if native_bf16_cpu() else "none"
    return "none"


def autocast(amp: str, device: torch.device):
    """The autocast context for ``amp`` on ``device`` (bf16 is the big speed lever on CPUs that
    multiply it natively; ``auto`` picks it only there, see :func:`resolve_amp`)."""
    amp = resolve_amp(amp, device)
    if amp == "none":
        return nullcontext()
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("fp16 autocast is only supported on CUDA; use amp=bf16 on CPU")
        return torch.autocast("cuda", dtype=torch.float16)
    raise ValueError(f"unknown amp mode {amp!r}; valid: none, bf16, fp16, auto")


class _Logger:
    """CSV + TensorBoard, written by rank 0 only."""

    def __init__(self, directory: Path, stage: str, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self.csv_path = directory / "log.csv"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(directory / "tb"))
            except ImportError:  # tensorboard is a listed dependency; keep training if absent
                self.tb = None
        self.stage = stage
        self._fields: list[str] | None = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **values}
        new = not self.csv_path.exists()
        if self._fields is None:
            self._fields = list(row)
        with open(self.csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{self.stage}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["rng/cuda"] = torch.cuda.get_rng_state()  # dropout draws on the GPU
    return state


def _set_rng_state(tensors: dict[str, torch.Tensor]) -> None:
    if "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"].to(torch.uint8))
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"].to(torch.uint8))


def checkpoint_due(cfg: TrainConfig, step: int, since_last_s: float) -> bool:
    """Whether to write a step checkpoint after ``step`` (0-based): every ``ckpt_every`` steps,
    or once ``ckpt_minutes`` of wall time passed since the last one; never after the last step
    (``final.safetensors`` follows)."""
    if step + 1 >= cfg.iters:
        return False
    by_steps = bool(cfg.ckpt_every) and (step + 1) % cfg.ckpt_every == 0
    by_time = cfg.ckpt_minutes > 0 and since_last_s >= cfg.ckpt_minutes * 60
    return by_steps or by_time


class WeightAverage:
    """The exponential moving average of a module's floating-point state (``TrainConfig.ema_decay``).

    Integer entries (counters) are copied, not averaged. ``state`` is what the stage saves."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) to average, got {decay}")
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._floating = [k for k, v in self.state.items() if v.is_floating_point()]
        self._other = [k for k, v in self.state.items() if not v.is_floating_point()]

    def decay_at(self, step: int) -> float:
        """The decay after 0-based ``step``: ``ema_decay``, warmed up over the first steps."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = self.decay_at(step)
        now = model.state_dict()
        if self._floating:
            avg = [self.state[k] for k in self._floating]
            torch._foreach_mul_(avg, d)
            torch._foreach_add_(avg, [now[k].detach() for k in self._floating], alpha=1.0 - d)
        for k in self._other:
            self.state[k].copy_(now[k])

    def to_flat(self) -> dict[str, torch.Tensor]:
        return {f"ema/{k}": v for k, v in self.state.items()}

    def load_flat(self, tensors: dict[str, torch.Tensor], what: str) -> None:
        missing = [k for k in self.state if f"ema/{k}" not in tensors]
        if missing:
            raise CheckpointError(
                f"{what} holds no weight average (train.ema_decay is set now but was not when it "
                f"was written): missing ema/{missing[0]}; resume with the stage's own ema_decay "
                "or start the stage afresh"
            )
        for k, v in self.state.items():
            v.copy_(tensors[f"ema/{k}"])


FINAL = "final.safetensors"  # a stage is finished when its final weights are written


def stage_done(directory: Path) -> bool:
    return (directory / FINAL).is_file()


def copy_stage(source: Path, directory: Path) -> None:
    """Copies the finished stage ``source`` into ``directory`` (``zeroseg demo --stages-from``),
    reading ``source`` only. Every file but the lock is copied atomically (a temporary file,
    then a rename), the final weights last, so ``directory`` counts as finished only once whole,
    and an interrupted copy leaves at most an unfinished stage that trains as usual. Step
    checkpoints are copied too (a finished stage keeps none but the final one)."""
    if not stage_done(source):
        raise ValueError(f"{source}: not a finished training stage (no {FINAL})")
    files = sorted(  # the final weights last
        (p for p in source.rglob("*") if p.is_file() and p.name != LOCK and not p.is_symlink()),
        key=lambda p: (p == source / FINAL, p),
    )
    for f in files:
        _atomic_write(directory / f.relative_to(source), lambda tmp, f=f: shutil.copyfile(f, tmp))


def train_stage(
    *,
    stage: str,
    model: torch.nn.Module,
    step_fn: Callable[[torch.nn.Module, dict], dict[str, torch.Tensor]],
    batches: Callable[[int, int], Iterable[tuple[int, dict]]],
    cfg: TrainConfig,
    directory: Path,
    split: ClassSplit | None = None,
    params: Iterable[torch.nn.Parameter] | None = None,
    device: torch.device = torch.device("cpu"),
    resume: bool = True,
    progress: bool = True,
    meta: dict | None = None,
) -> dict:
    """Runs one training stage to ``cfg.iters`` steps (or resumes it) and saves its weights.

    Args:
        stage: a name for logs and checkpoints ("segmenter", "generator", ...).
        model: the module whose ``state_dict`` is checkpointed (all of it, trainable or not).
        step_fn: computes the losses of one batch; ``"loss"`` is optimised, the rest logged.
        batches: ``batches(start, stop)`` yields ``(step, batch)``; must be a function of the step.
        cfg: the schedule.
        directory: the stage's directory (checkpoints, ``log.csv``, ``tb/``, ``final.safetensors``).
        split: when given, every batch is checked to carry no unseen label (stages 1-3, 5).
        params: the trainable parameters (default: all of ``model`` that require grad).
        resume: continue from the newest step checkpoint if one exists. Step checkpoints are
            written every ``cfg.ckpt_every`` steps and every ``cfg.ckpt_minutes`` minutes (5 by
            default), so a kill at any moment loses at most that much of the stage.

    Returns:
        The mean of each logged value over the last ``log_every`` steps.
    """

    # Shared stage directories (``RunContext.shared_stage_dir``) can be reached by two runs at
    # once; the lock keeps their step checkpoints from interleaving.
    with hold_lock(directory) if dist.is_main() else contextlib.nullcontext():
        directory.mkdir(parents=True, exist_ok=True)
        main = dist.is_main()
        torch.manual_seed(cfg.seed)
        model.to(device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        opt = build_optimizer(params if params is not None else model.parameters(), cfg)
        base_lrs = [g["lr"] for g in opt.param_groups]
        start = 0
        last_good: Path | None = None
        ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay != 0 else None
        if resume:
            ckpts = list_checkpoints(directory)
            if ckpts:
                last_good = ckpts[-1]
                tensors, m = load_checkpoint(last_good)
                if m.get("stage") != stage:
                    raise CheckpointError(
                        f"{last_good} belongs to stage {m.get('stage')!r}, not {stage!r}"
                    )
                load_state_dict_strict(
                    model,
                    {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")},
                    what=f"checkpoint {last_good}",
                )
                optimizer_from_flat(opt, tensors, m["optimizer"])
                if ema is not None:
                    ema.load_flat(tensors, what=f"checkpoint {last_good}")
                _set_rng_state(tensors)
                start = int(m["step"])
                if main:
                    print(
                        f"[zeroseg] {stage}: resuming at step {start}/{cfg.iters} from {last_good}",
                        file=sys.stderr,
                    )
        ddp_model = dist.wrap(model)
        logger = _Logger(directory, stage, enabled=main)
        if main and start == 0:
            (directory / "log.csv").unlink(missing_ok=True)
        recent: dict[str, list[float]] = {}
        t0 = last_save = time.perf_counter()
        bar = tqdm(
            total=cfg.iters, initial=start, desc=stage, disable=not (progress and main), leave=False
        )
        model.train()

        def save(step: int) -> Path:
            tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
            opt_t, opt_m = optimizer_to_flat(opt)
            tensors.update(opt_t)
            if ema is not None:
                tensors.update(ema.to_flat())
            tensors.update(_rng_state())
            path = directory / f"step-{step:07d}.safetensors"
            save_checkpoint(
                path,
                tensors,
                {
                    "stage": stage,
                    "step": step,
                    "optimizer": opt_m,
                    "train": asdict(cfg),
                    "amp_resolved": resolve_amp(cfg.amp, device),
                    **(meta or {}),
                },
            )
            for old in list_checkpoints(directory)[: -max(1, cfg.keep_ckpts)]:
                old.unlink(missing_ok=True)
                old.with_suffix(".json").unlink(missing_ok=True)
            return path

        hooks = ExitStack()
        try:
            for step, batch in batches(start, cfg.iters):
                if split is not None:
                    assert_seen_only(batch, split, stage=stage)
                hooks = _enter_step_hooks(stage, step, batch, cfg)
                factor = lr_factor(cfg, step)
                for g, lr in zip(opt.param_groups, base_lrs):
                    g["lr"] = lr * factor
                with autocast(cfg.amp, device):
                    losses = step_fn(ddp_model, batch)
                loss = losses["loss"]
                if not torch.isfinite(loss.detach()).all():
                    ids = (
                        batch.get("id", batch.get("index", "?")) if isinstance(batch, dict) else "?"
                    )
                    raise NonFiniteLossError(
                        f"stage {stage!r}: loss is {loss.item()} at step {step} (batch {ids}); "
                        f"last good checkpoint: {last_good or 'none (no step checkpoint yet)'}"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in opt.param_groups for p in g["params"]], cfg.grad_clip
                    )
                opt.step()
                if ema is not None:
                    ema.update(model, step)
                hooks.close()
                for k, v in losses.items():
                    recent.setdefault(k, []).append(float(v.detach()))
                    recent[k] = recent[k][-cfg.log_every :]
                bar.update(1)
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.iters:
                    values = {k: sum(v) / len(v) for k, v in recent.items()}
                    values["lr"] = base_lrs[0] * factor
                    values["elapsed_s"] = time.perf_counter() - t0
                    logger.log(step + 1, values)
                    bar.set_postfix(loss=f"{values['loss']:.4f}")
                # Only rank 0 decides and writes; a time-based checkpoint needs no barrier (the next
                # step's gradient all-reduce keeps the ranks together).
                if main and checkpoint_due(cfg, step, time.perf_counter() - last_save):
                    last_good = save(step + 1)
                    last_save = time.perf_counter()
                dist.barrier_if_needed(cfg.ckpt_every, step)
        finally:
            hooks.close()
            bar.close()
            logger.close()
            if cfg.channels_last:  # saved weights and inference in the usual layout
                model.to(memory_format=torch.contiguous_format)
        if ema is not None:  # the stage's weights are the average
            model.load_state_dict(ema.state)
        if main:
            save_checkpoint(
                directory / FINAL,
                model.state_dict(),
                {
                    "stage": stage,
                    "step": cfg.iters,
                    "train": asdict(cfg),
                    "amp_resolved": resolve_amp(cfg.amp, device),
                    **(meta or {}),
                },
            )
        dist.barrier()
        model.eval()
        return {k: sum(v) / len(v) for k, v in recent.items()}


def load_stage(model: torch.nn.Module, directory: Path) -> dict:
    """Loads a finished stage's weights into ``model`` (strict); returns what was recorded with
    them (the stage, its schedule, the method's ``meta``)."""
    tensors, meta = load_checkpoint(directory / FINAL)
    load_state_dict_strict(model, tensors, what=f"stage weights {directory / FINAL}")
    return meta

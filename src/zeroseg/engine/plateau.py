"""When a training stage's loss stopped falling: read from its logged curve (``log.csv``).

The trainer logs the mean loss of every ``log_every`` steps. A stage has *plateaued* at the first
logged step ``s`` after which the loss never again falls by more than ``rel_tol`` of its value at
``s`` over the next ``window`` logged points (compared as means of ``window`` points, so one noisy
point neither starts nor ends a plateau). Used to choose PADing's generator and classifier
schedules (trained until their losses plateau) and to report, per run, whether they did.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from zeroseg.config import ConfigError
from zeroseg.engine.checkpoint import _atomic_write

__all__ = ["Plateau", "find_plateau", "read_curve", "write_plateau"]


@dataclass(frozen=True)
class Plateau:
    """The plateau of one logged curve.

    Attributes:
        step: the first logged step from which the loss stays flat (None: still falling at the end).
        final_step: the last logged step.
        start_loss: the first logged loss.
        final_loss: the mean of the last ``window`` logged losses.
        window: the window (logged points) of the criterion.
        rel_tol: the relative fall that counts as still falling.
    """

    step: int | None
    final_step: int
    start_loss: float
    final_loss: float
    window: int
    rel_tol: float

    @property
    def reached(self) -> bool:
        return self.step is not None

    def as_dict(self) -> dict:
        return {**asdict(self), "reached": self.reached}


def read_curve(log_csv: Path, key: str = "loss") -> tuple[list[int], list[float]]:
    """(steps, values) of one column of a stage's ``log.csv``."""
    if not log_csv.is_file():
        raise ConfigError(f"no training log at {log_csv}: the stage has not been trained here")
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and key not in rows[0]:
        raise ConfigError(f"{log_csv} has no column {key!r}; columns: {sorted(rows[0])}")
    return [int(r["step"]) for r in rows], [float(r[key]) for r in rows]


def find_plateau(
    steps: list[int], losses: list[float], *, window: int = 4, rel_tol: float = 0.02
) -> Plateau:
    """The plateau of a logged loss curve (see the module docstring).

    Args:
        steps: logged steps, increasing.
        losses: the logged mean losses at those steps.
        window: logged points per compared mean (>= 1).
        rel_tol: a fall of the windowed mean by more than this fraction of its magnitude, between
            a point's window and any later window, means the loss is still falling there.
    """
    if len(steps) != len(losses) or not steps:
        raise ConfigError(
            f"a loss curve needs as many steps as losses (>= 1); got {len(steps)} and {len(losses)}"
        )
    if window < 1 or rel_tol < 0:
        raise ConfigError(f"plateau window must be >= 1 and rel_tol >= 0; got {window}, {rel_tol}")
    means = [
        sum(losses[i : i + window]) / len(losses[i : i + window])
        for i in range(len(losses) - window + 1)
    ]
    step = None
    for i, m in enumerate(means):
        # flat from i on: no later window's mean is lower by more than rel_tol * |m|
        if min(means[i:]) >= m - rel_tol * abs(m):
            step = steps[i]
            break
    if step is not None and step == steps[len(means) - 1] and len(means) > 1:
        # only the last window is "flat" because nothing follows it: not evidence of a plateau
        step = None
    tail = losses[-window:]
    return Plateau(
        step=step,
        final_step=steps[-1],
        start_loss=losses[0],
        final_loss=sum(tail) / len(tail),
        window=window,
        rel_tol=rel_tol,
    )


def write_plateau(path: Path, plateau: Plateau, steps: list[int], losses: list[float]) -> None:
    """Writes the plateau and the curve it was read from as JSON (atomically)."""
    text = json.dumps({**plateau.as_dict(), "steps": steps, "loss": losses}, indent=1)
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))

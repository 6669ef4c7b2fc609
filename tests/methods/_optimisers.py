"""A spy on the optimisers training builds, for the learning-rate multiplier tests."""

from __future__ import annotations

from zeroseg.engine import trainer


def spy_optimisers(monkeypatch) -> list:
    """Every optimiser built from now on, as (its groups' parameter ids, their learning rates)."""
    made = []
    real = trainer.build_optimizer

    def spy(params, cfg):
        opt = real(params, cfg)
        made.append(
            (
                [{id(p) for p in g["params"]} for g in opt.param_groups],
                [g["lr"] for g in opt.param_groups],
            )
        )
        return opt

    monkeypatch.setattr(trainer, "build_optimizer", spy)
    return made

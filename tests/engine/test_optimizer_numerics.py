"""The trainer's optimisers give bit-identical updates to torch's single-tensor reference loop,
so a faster implementation (foreach) never changes a training result."""

from __future__ import annotations

import copy

import pytest
import torch

from zeroseg.engine.trainer import TrainConfig, build_optimizer


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 5),
    )


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(optimizer="adamw", lr=3e-3, weight_decay=0.01),
        TrainConfig(optimizer="sgd", lr=1e-2, momentum=0.9, weight_decay=1e-4),
    ],
)
def test_build_optimizer_matches_the_single_tensor_loop_bit_for_bit(cfg):
    ours, ref = _model(), _model()
    ref.load_state_dict(ours.state_dict())
    opt = build_optimizer(ours.parameters(), cfg)
    if cfg.optimizer == "adamw":
        ref_opt = torch.optim.AdamW(
            ref.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False
        )
    else:
        ref_opt = torch.optim.SGD(
            ref.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            foreach=False,
        )
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.randn(4, 3, 8, 8, generator=g)
        for model, o in ((ours, opt), (ref, ref_opt)):
            for group in o.param_groups:  # the trainer's schedule rescales lr in place
                group["lr"] = cfg.lr * (1 - step / 6)
            o.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            o.step()
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(ours[0].weight, _model()[0].weight)  # it did train
    state = copy.deepcopy(opt.state_dict()["state"])
    for key, value in ref_opt.state_dict()["state"].items():
        for k, v in value.items():
            assert torch.equal(torch.as_tensor(state[key][k]), torch.as_tensor(v)), (key, k)

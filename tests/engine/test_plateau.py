"""The plateau criterion read from a stage's logged loss curve."""

from __future__ import annotations

import json

import pytest

from zeroseg.config import ConfigError
from zeroseg.engine.plateau import find_plateau, read_curve, write_plateau


def test_plateau_found_where_the_curve_flattens():
    steps = list(range(25, 25 * 13, 25))  # 12 logged points
    losses = [2.0, 1.5, 1.1, 0.9, 0.8, 0.75, 0.74, 0.745, 0.74, 0.742, 0.741, 0.74]
    p = find_plateau(steps, losses, window=2, rel_tol=0.02)
    # window means: ..., (0.8+0.75)/2=0.775 at index 4 still falls to 0.74 (4.5%); at index 5
    # (0.745) the lowest later mean is 0.7405 (0.6% lower): flat from step 150 on.
    assert p.reached and p.step == 150
    assert p.final_step == 300 and p.start_loss == 2.0
    assert p.final_loss == pytest.approx(0.7405)  # mean of the last window (2 points)


def test_still_falling_curve_has_no_plateau():
    steps = list(range(10, 110, 10))
    losses = [1.0 * 0.9**i for i in range(10)]  # 10% fall per point, to the end
    p = find_plateau(steps, losses, window=3, rel_tol=0.02)
    assert not p.reached and p.step is None and p.as_dict()["reached"] is False


def test_bad_curves_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="as many steps as losses"):
        find_plateau([1, 2], [1.0])
    with pytest.raises(ConfigError, match="window must be >= 1"):
        find_plateau([1], [1.0], window=0)
    with pytest.raises(ConfigError, match="no training log"):
        read_curve(tmp_path / "log.csv")
    (tmp_path / "log.csv").write_text("step,mmd\n25,0.5\n")
    with pytest.raises(ConfigError, match="no column 'loss'"):
        read_curve(tmp_path / "log.csv")


def test_curve_round_trip(tmp_path):
    (tmp_path / "log.csv").write_text("step,loss,lr\n25,1.0,0.1\n50,0.5,0.1\n75,0.5,0.1\n")
    steps, losses = read_curve(tmp_path / "log.csv")
    assert steps == [25, 50, 75] and losses == [1.0, 0.5, 0.5]
    p = find_plateau(steps, losses, window=1, rel_tol=0.01)
    assert p.step == 50
    write_plateau(tmp_path / "plateau.json", p, steps, losses)
    saved = json.loads((tmp_path / "plateau.json").read_text())
    assert saved["step"] == 50 and saved["loss"] == losses and saved["reached"] is True

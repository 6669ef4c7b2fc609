"""predict: any number of classes, never an overwritten output, --alpha; eval/predict find a
model from the directory given to train."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zeroseg import predict as predict_module
from zeroseg.cli import main, output_stems
from zeroseg.config import ExperimentConfig
from zeroseg.data.classes import ClassSplit
from zeroseg.data.io import ImageError
from zeroseg.engine.checkpoint import CheckpointError
from zeroseg.predict import Predictor
from zeroseg.runner import find_model
from zeroseg.viz import colorize, palette, save_label_png

K = 300
NAMES = [f"class {i}" for i in range(K)]


class PixelIndex(torch.nn.Module):
    """Scores whose argmax at pixel (y, x) is ``(y * W + x) % K``: every label 0..K-1 occurs."""

    def scores(self, images, emb, seen_mask):
        b, _, h, w = images.shape
        target = torch.arange(h * w).view(h, w) % emb.shape[0]
        return torch.nn.functional.one_hot(target, emb.shape[0]).permute(2, 0, 1)[None].float()

    def labels(self, images, emb, seen_mask):  # Method.labels: the argmax of the scores
        return self.scores(images, emb, seen_mask).argmax(1)


def _predictor() -> Predictor:
    p = Predictor(PixelIndex(), ExperimentConfig(), ClassSplit(("class 0", "class 1"), unseen=(1,)))
    p.embed = lambda names: torch.zeros(len(names), 4)
    return p


def test_300_classes_keep_their_labels_in_the_api_png_and_colours(tmp_path):
    image = np.zeros((20, 20, 3), np.uint8)
    label = _predictor().predict(image, NAMES)
    expected = np.arange(400).reshape(20, 20) % K
    assert label.dtype == np.uint16 and np.array_equal(label, expected)  # 256..299 intact
    path = save_label_png(label, tmp_path / "l.png", num_classes=K)
    back = np.asarray(Image.open(path))
    assert np.array_equal(back, expected)
    colors = colorize(label, K, ignore_index=None)
    assert np.array_equal(colors[expected == 299], np.repeat(palette(K)[299][None], 1, 0))
    assert np.array_equal(colors[expected == 255][0], palette(K)[255])  # 255 is a class here
    small = _predictor().predict(image, NAMES[:3])
    assert small.dtype == np.uint8 and np.array_equal(small, np.arange(400).reshape(20, 20) % 3)


def _cli(tmp_path, monkeypatch, *args):
    monkeypatch.setattr(
        predict_module.Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: _predictor())
    )
    return main(["predict", "unused.safetensors", *map(str, args)])


def test_cli_writes_16_bit_labels_for_300_classes(tmp_path, monkeypatch):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(img)
    out = tmp_path / "out"
    assert _cli(tmp_path, monkeypatch, img, "--classes", ",".join(NAMES), "--out", out) == 0
    label = np.asarray(Image.open(out / "x_label.png"))
    assert np.array_equal(label, np.arange(400).reshape(20, 20) % K)
    assert Image.open(out / "x_overlay.png").size[0] > 100


def test_same_stems_get_distinct_outputs_and_nothing_is_overwritten(tmp_path, monkeypatch, capsys):
    inputs = []
    for ext, value in (("png", 10), ("jpg", 120), ("webp", 240)):
        path = tmp_path / f"a.{ext}"
        Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(path)
        inputs.append(path)
    out = tmp_path / "out"
    assert _cli(tmp_path, monkeypatch, *inputs, "--classes", "p,q", "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        f"a_{e}_{k}.png" for e in ("jpg", "png", "webp") for k in ("label", "overlay")
    ]
    before = (out / "a_png_label.png").read_bytes()
    capsys.readouterr()
    assert _cli(tmp_path, monkeypatch, inputs[0], inputs[1], "--classes", "p", "--out", out) == 2
    assert capsys.readouterr().err == (
        f"zeroseg: error: {out / 'a_png_label.png'} already exists (4 output file(s) in all); "
        "pass --overwrite to replace them or choose another --out\n"
    )
    assert (out / "a_png_label.png").read_bytes() == before
    args = (inputs[0], inputs[1], "--classes", "p", "--out", out, "--overwrite")
    assert _cli(tmp_path, monkeypatch, *args) == 0
    assert (out / "a_png_label.png").read_bytes() != before  # one class now: all zeros


def test_the_same_file_name_in_two_directories_is_an_error():
    assert output_stems(["a.png", "b.png", "a.jpg"]) == ["a_png", "b", "a_jpg"]
    with pytest.raises(ImageError, match=r"x/a\.png and y/a\.png would both write a_png_label"):
        output_stems(["x/a.png", "y/a.png", "a.jpg"])


def test_alpha_option(tmp_path, monkeypatch, capsys):
    rgba = tmp_path / "t.png"
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(rgba)
    out = tmp_path / "out"
    assert _cli(tmp_path, monkeypatch, rgba, "--classes", "p,q", "--out", out) == 2
    assert "--alpha drop" in capsys.readouterr().err
    assert not out.exists()
    assert (
        _cli(tmp_path, monkeypatch, rgba, "--classes", "p,q", "--out", out, "--alpha", "drop") == 0
    )
    assert (out / "t_label.png").is_file()


def test_find_model_accepts_the_train_out_directory(tmp_path):
    run = tmp_path / "out" / "projection"
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"")
    assert find_model(tmp_path / "out") == run / "model.safetensors"
    assert find_model(run) == run / "model.safetensors"
    (tmp_path / "out" / "zs3net").mkdir()
    (tmp_path / "out" / "zs3net" / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"holds 2 trained runs .*: name one"):
        find_model(tmp_path / "out")
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        find_model(tmp_path)


def test_eval_amp_reaches_the_labels_path():
    class Records(PixelIndex):
        autocast: list[bool] = []

        def labels(self, images, emb, seen_mask):
            self.autocast.append(torch.is_autocast_enabled("cpu"))
            return super().labels(images, emb, seen_mask)

    cfg = ExperimentConfig()
    cfg.eval.amp = "bf16"
    p = Predictor(Records(), cfg, ClassSplit(("class 0", "class 1"), unseen=(1,)))
    p.embed = lambda names: torch.zeros(len(names), 4)
    label = p.predict(np.zeros((20, 20, 3), np.uint8), NAMES[:3])
    assert Records.autocast == [True]
    assert np.array_equal(label, np.arange(400).reshape(20, 20) % 3)
    p = Predictor(Records(), ExperimentConfig(), ClassSplit(("class 0", "class 1"), unseen=(1,)))
    p.embed = lambda names: torch.zeros(len(names), 4)
    p.predict(np.zeros((20, 20, 3), np.uint8), NAMES[:3])  # the default: no autocast
    assert Records.autocast == [True, False]


def test_cli_amp_option(tmp_path, monkeypatch):
    made: list[Predictor] = []

    def fake(cls, *a, **k):
        made.append(_predictor())
        return made[-1]

    monkeypatch.setattr(predict_module.Predictor, "from_checkpoint", classmethod(fake))
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(img)
    args = ["predict", "m.safetensors", str(img), "--classes", "p,q", "--overwrite"]
    assert main([*args, "--out", str(tmp_path / "a"), "--amp", "bf16"]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert [p.cfg.eval.amp for p in made] == ["bf16", "none"]
    with pytest.raises(SystemExit):
        main([*args, "--amp", "fp16"])

"""ResNet backbones (torchvision layout and weight loading) and DeepLabv3+."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zeroseg.models.backbones.deeplab import (
    DEEPLAB_PRESETS,
    DeepLabV3Plus,
    build_deeplab,
)
from zeroseg.models.backbones.resnet import (
    RESNETS,
    Bottleneck,
    build_resnet,
    group_norm,
    load_torchvision_resnet,
)


@pytest.fixture(autouse=True)
def one_thread():
    # Two OpenMP threads on a shared 2-core machine can be 10-50x slower than one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(name: str = "resnet18", **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_resnet(name, base_width=8, **kw)


# ---------------------------------------------------------------- ResNet layout


@pytest.mark.parametrize(
    "name, params",
    # torchvision's published parameter counts of the ImageNet models (with the 1000-way fc).
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
    ],
)
def test_full_width_resnet_has_torchvision_parameter_count(name, params):
    with torch.device("meta"):  # shapes only, no memory or init time
        model = build_resnet(name, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == params


def test_resnet50_key_names_and_counts_match_torchvision():
    with torch.device("meta"):
        sd = build_resnet("resnet50", num_classes=1000).state_dict()
        model = build_resnet("resnet50")
    # 53 convs + fc weight/bias, 53 norms x 5 entries (weight, bias, mean, var, counter) = 320.
    assert len(sd) == 320
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.num_batches_tracked",
        "layer3.5.conv3.weight",
        "layer4.2.bn3.bias",
        "fc.weight",
    ):
        assert key in sd
    # v1.5: the stride is on the 3x3 conv2 of the first block of layer2.
    block = model.layer2[0]
    assert isinstance(block, Bottleneck)
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


def test_resnet18_has_no_layer1_downsample_and_no_fc_by_default():
    sd = _tiny().state_dict()
    assert not any(k.startswith("layer1.0.downsample") for k in sd)
    assert "layer2.0.downsample.0.weight" in sd
    assert not any(k.startswith("fc.") for k in sd)


@pytest.mark.parametrize(
    "name, os, out_ch, low_ch",
    # base_width 8: stage widths 8, 16, 32, 64; Bottleneck multiplies by 4.
    [
        ("resnet18", 8, 64, 8),
        ("resnet18", 16, 64, 8),
        ("resnet18", 32, 64, 8),
        ("resnet50", 16, 256, 32),
    ],
)
def test_forward_features_shapes(name, os, out_ch, low_ch):
    model = _tiny(name, output_stride=os).eval()
    feats = model.forward_features(torch.randn(2, 3, 64, 64))
    assert model.out_channels == out_ch and model.low_level_channels == low_ch
    assert feats["low_level"].shape == (2, low_ch, 16, 16)
    assert feats["out"].shape == (2, out_ch, 64 // os, 64 // os)


def test_dilation_replaces_stride_as_torchvision_does():
    m = _tiny(output_stride=8)
    # layer3: stride 2 -> dilation 2; its first block keeps the previous dilation (1).
    assert m.layer3[0].conv1.stride == (1, 1) and m.layer3[0].conv1.dilation == (1, 1)
    assert m.layer3[0].downsample[0].stride == (1, 1)
    assert m.layer3[1].conv1.dilation == (2, 2)
    # layer4: dilation 2 * 2 = 4; first block keeps 2.
    assert m.layer4[0].conv1.dilation == (2, 2) and m.layer4[1].conv2.dilation == (4, 4)
    m16 = _tiny(output_stride=16)
    assert m16.layer3[0].conv1.stride == (2, 2)
    assert m16.layer4[0].conv1.dilation == (1, 1) and m16.layer4[1].conv1.dilation == (2, 2)


def test_multi_grid_multiplies_layer4_dilation():
    m = _tiny("resnet50", output_stride=16, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in m.layer4] == [2, 4, 8]
    with pytest.raises(ValueError, match="one multiplier per layer4 block"):
        _tiny("resnet50", multi_grid=(1, 2))


def test_unknown_resnet_lists_valid_names():
    with pytest.raises(KeyError, match="resnet18, resnet34, resnet50, resnet101"):
        build_resnet("resnet152")
    assert set(RESNETS) == {"resnet18", "resnet34", "resnet50", "resnet101"}


def test_group_norm_factory_fits_narrow_layers():
    m = _tiny(norm_layer=group_norm(32))
    assert isinstance(m.bn1, nn.GroupNorm) and m.bn1.num_groups == 8  # gcd(32, 8)
    out = m.train().forward_features(torch.randn(1, 3, 32, 32))["out"]
    assert out.shape == (1, 64, 1, 1)


def test_forward_without_head_says_to_use_forward_features():
    with pytest.raises(RuntimeError, match="forward_features"):
        _tiny()(torch.randn(1, 3, 32, 32))


# ---------------------------------------------------------------- torchvision weights


def _write_torchvision_checkpoint(path, name="resnet18", drop_counters=False):
    """A torchvision-format file: a flat state dict, fc included, of a random ImageNet model."""
    src = _tiny(name, num_classes=10)
    for p in src.parameters():
        nn.init.normal_(p)
    for mod in src.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
    sd = src.state_dict()
    if drop_counters:
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, path)
    return sd


def test_load_torchvision_checkpoint_exactly_and_drops_fc(tmp_path):
    path = tmp_path / "resnet18.pth"
    sd = _write_torchvision_checkpoint(path)
    assert "fc.weight" in sd
    model = load_torchvision_resnet(_tiny(output_stride=8), path)
    loaded = model.state_dict()
    assert set(loaded) == {k for k in sd if not k.startswith("fc.")}
    for k, v in loaded.items():
        assert torch.equal(v, sd[k]), k


def test_load_into_model_with_head_keeps_fc(tmp_path):
    path = tmp_path / "resnet18.pth"
    sd = _write_torchvision_checkpoint(path)
    model = load_torchvision_resnet(_tiny(num_classes=10), path)
    assert torch.equal(model.fc.weight, sd["fc.weight"])


def test_old_checkpoints_without_bn_counters_load(tmp_path):
    path = tmp_path / "old.pth"
    sd = _write_torchvision_checkpoint(path, drop_counters=True)
    model = load_torchvision_resnet(_tiny(), path)
    assert torch.equal(model.layer2[0].bn1.running_var, sd["layer2.0.bn1.running_var"])


def test_missing_key_is_named(tmp_path):
    path = tmp_path / "r.pth"
    sd = _write_torchvision_checkpoint(path)
    del sd["layer2.0.downsample.1.weight"]
    torch.save(sd, path)
    with pytest.raises(
        ValueError, match=r"missing: layer2\.0\.downsample\.1\.weight \(model \(16,\)\)"
    ):
        load_torchvision_resnet(_tiny(), path)


def test_wrong_shape_is_named_with_both_shapes(tmp_path):
    path = tmp_path / "r.pth"
    sd = _write_torchvision_checkpoint(path)
    sd["layer1.0.conv1.weight"] = torch.zeros(8, 8, 1, 1)
    sd["bogus.weight"] = torch.zeros(3)
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        load_torchvision_resnet(_tiny(), path)
    msg = str(err.value)
    assert (
        "shape mismatch: layer1.0.conv1.weight (checkpoint (8, 8, 1, 1), model (8, 8, 3, 3))" in msg
    )
    assert "unexpected: bogus.weight (checkpoint (3,))" in msg


def test_architecture_mismatch_fails(tmp_path):
    path = tmp_path / "r50.pth"
    _write_torchvision_checkpoint(path, name="resnet50")
    with pytest.raises(ValueError, match="unexpected: layer1.0.conv3.weight"):
        load_torchvision_resnet(_tiny("resnet18"), path)


class _Payload:
    """Unpickling this would run code (sets a flag); weights_only loading must refuse it."""

    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True
    return {}


def test_loading_never_unpickles_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_torchvision_resnet(_tiny(), path)
    assert not _Payload.ran


def test_nested_checkpoint_is_rejected_with_its_keys(tmp_path):
    path = tmp_path / "nested.pth"
    torch.save({"state_dict": _tiny().state_dict(), "epoch": 3}, path)
    with pytest.raises(ValueError, match=r"not a torchvision state dict.*'state_dict', 'epoch'"):
        load_torchvision_resnet(_tiny(), path)


def test_missing_file_names_path_and_where_to_get_weights(tmp_path):
    path = tmp_path / "nope" / "resnet101.pth"
    with pytest.raises(FileNotFoundError) as err:
        load_torchvision_resnet(_tiny(), path)
    msg = str(err.value)
    assert str(path) in msg
    assert "download.pytorch.org/models" in msg and "resnet101-63fe2227.pth" in msg


# ---------------------------------------------------------------- DeepLabv3+


def _deeplab(os: int = 8, **kw) -> DeepLabV3Plus:
    torch.manual_seed(0)
    return build_deeplab("deeplabv3plus-small", output_stride=os, num_classes=5, **kw)


@pytest.mark.parametrize("os", [8, 16])
def test_deeplab_shapes(os):
    model = _deeplab(os).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 64, 16, 16)  # feature_dim 64 at stride 4
    assert (feats >= 0).all()  # post-ReLU, what the generator must imitate
    assert model(x).shape == (2, 5, 64, 64)
    assert model.feature_dim == 64 and model.num_classes == 5


def test_deeplab_odd_input_size_rounds_up():
    model = _deeplab(16).eval()
    x = torch.randn(1, 3, 65, 50)
    assert model.forward_features(x).shape[-2:] == (17, 13)
    assert model(x).shape == (1, 5, 65, 50)


def test_aspp_rates_follow_output_stride():
    def rates(m):
        return [m.aspp.convs[i][0].dilation[0] for i in (1, 2, 3)]

    # The paper's (6, 12, 18) at OS16, doubled at OS8; a narrow r50 to stay fast.
    r50 = build_deeplab("deeplabv3plus-r50", base_width=8, aspp_channels=16, decoder_channels=16)
    assert rates(r50) == [6, 12, 18]
    assert rates(build_deeplab("deeplabv3plus-r50", output_stride=8, base_width=8)) == [12, 24, 36]
    assert rates(_deeplab(8)) == [2, 4, 6]  # small preset: (1, 2, 3) at OS16
    with pytest.raises(ValueError, match="do not rescale"):
        _deeplab(32)


def test_presets_exist_and_paper_config_is_256_wide():
    assert set(DEEPLAB_PRESETS) == {
        "deeplabv3plus-r101",
        "deeplabv3plus-r50",
        "deeplabv3plus-small",
    }
    cfg = DEEPLAB_PRESETS["deeplabv3plus-r101"]
    assert (cfg.backbone, cfg.output_stride, cfg.feature_dim, cfg.low_level_channels) == (
        "resnet101",
        16,
        256,
        48,
    )
    with pytest.raises(KeyError, match="deeplabv3plus-small"):
        build_deeplab("deeplabv3plus-r152")
    with pytest.raises(TypeError, match="aspp_chanels"):
        build_deeplab("deeplabv3plus-small", aspp_chanels=3)


def test_classify_equals_forward_and_reset_classifier():
    model = _deeplab().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert torch.allclose(model.classify(feats, size=(64, 64)), model(x))
        assert model.classify(feats).shape == (2, 5, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier")}
    old = model.classifier
    model.reset_classifier(9)
    assert model.classifier is not old and model.num_classes == 9
    assert model(x).shape == (2, 9, 64, 64)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), feats)
    head = {id(p) for p in model.head_parameters()}
    assert id(model.classifier.weight) in head
    assert not head & {id(p) for p in model.backbone_parameters()}


def test_group_norm_deeplab_trains_with_batch_one():
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        _deeplab().train()(x)  # BatchNorm on the 1x1 image-pooling branch
    model = _deeplab(norm="group").train()
    assert model(x).shape == (1, 5, 64, 64)


def test_deeplab_backbone_loads_torchvision_weights(tmp_path):
    path = tmp_path / "resnet18.pth"
    src = build_resnet("resnet18", base_width=16, num_classes=1000)
    torch.save(src.state_dict(), path)
    model = _deeplab()
    load_torchvision_resnet(model.backbone, path)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


def test_small_deeplab_learns_a_toy_segmentation():
    # Two classes: a bright square on a dark background. A few SGD steps must fit it.
    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 64, 64, generator=g) * 0.3
    labels = torch.zeros(8, 64, 64, dtype=torch.long)
    for i in range(8):
        r, c = torch.randint(0, 40, (2,), generator=g).tolist()
        images[i, :, r : r + 24, c : c + 24] += 0.6
        labels[i, r : r + 24, c : c + 24] = 1
    torch.manual_seed(0)
    model = build_deeplab("deeplabv3plus-small", num_classes=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(30):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Batch statistics (train mode): BatchNorm running averages lag after only 30 steps.
    acc = (logits.argmax(1) == labels).float().mean().item()
    assert loss.item() < 0.15 and acc > 0.95

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from zeroseg.data.io import ImageError, check_label_range, check_same_size, read_image, read_label


def test_rgb_gray_and_palette_images_decode_to_rgb(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), arr)
    Image.fromarray(arr[..., 0]).save(tmp_path / "g.png")
    g = read_image(tmp_path / "g.png")
    assert g.shape == (5, 7, 3) and np.array_equal(g[..., 1], arr[..., 0])
    Image.fromarray(arr).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (5, 7, 3)


def test_bad_images_are_rejected_with_the_file_named(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ImageError, match="junk.jpg"):
        read_image(tmp_path / "junk.jpg")
    arr = np.zeros((40, 40, 3), np.uint8)
    Image.fromarray(arr).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="trunc.png"):
        read_image(tmp_path / "trunc.png")
    with pytest.raises(ImageError, match="missing.png: file does not exist"):
        read_image(tmp_path / "missing.png")


def test_rgba_16bit_and_bombs(tmp_path):
    Image.fromarray(np.zeros((4, 4, 4), np.uint8), mode="RGBA").save(tmp_path / "rgba.png")
    with pytest.raises(ImageError, match="rgba.png: has an alpha channel"):
        read_image(tmp_path / "rgba.png")
    assert read_image(tmp_path / "rgba.png", alpha="drop").shape == (4, 4, 3)
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(ImageError, match="deep.png: .*not supported"):
        read_image(tmp_path / "deep.png")
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="big.png: .*(pixel limit|decompression bomb)"):
        read_image(tmp_path / "big.png", max_pixels=1000)


def test_labels_must_be_single_channel_and_in_range(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb_label.png")
    with pytest.raises(ImageError, match="rgb_label.png: label maps must be single-channel"):
        read_label(tmp_path / "rgb_label.png")
    lab = np.array([[0, 1], [255, 9]], np.uint8)
    with pytest.raises(ImageError, match=r"x.png: label values \[9\]"):
        check_label_range(lab, 5, 255, where="x.png")
    check_label_range(lab, 10, 255, where="x.png")
    with pytest.raises(ImageError, match="image is 3x2 but its label is 2x2"):
        check_same_size(np.zeros((2, 3, 3)), lab, where="pair")


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    mode=st.sampled_from(["L", "RGB", "P"]),
    seed=st.integers(0, 1000),
)
def test_decoding_round_trips_any_small_image(tmp_path_factory, h, w, mode, seed):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
    path = tmp_path_factory.mktemp("hyp") / f"x_{mode}.png"
    Image.fromarray(arr, mode="L" if mode != "RGB" else "RGB").convert(mode).save(path)
    img = read_image(path)
    assert img.shape == (h, w, 3) and img.dtype == np.uint8
    if mode in ("L", "P"):
        lab = read_label(path)
        assert lab.shape == (h, w)
        if mode == "L":
            assert np.array_equal(lab, arr)

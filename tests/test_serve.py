"""zeroseg serve: the page's logic without a server, then the page itself in headless Chromium.

The browser test drives Debian's ``chromium`` through its ``chromium-driver`` with Selenium; no
browser is ever downloaded. Without them the test is skipped with the reason, except under
``CI=true`` where it fails (``.ci/run`` installs them).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from zeroseg.cli import build_parser, main
from zeroseg.data.shapeworld import load_spec
from zeroseg.data.shapeworld.render import render
from zeroseg.predict import Predictor
from zeroseg.serve import (
    DEFAULT_MAX_PIXELS,
    MAX_NAMES,
    NO_MODELS,
    ServeApp,
    ServeError,
    examples_world,
    find_models,
    legend_html,
    make_examples,
    marks_html,
    name_roles,
    parse_names,
)
from zeroseg.viz import palette

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def runs(demo_run) -> Path:
    """The tiny world's demo models: the projection baseline (blue square unseen) and the oracle
    (every class labelled), in ``runs/<method>-<fingerprint>`` as ``make demo`` writes them."""
    return demo_run / "runs"


def _run(runs: Path, method: str) -> Path:
    return next(runs.glob(f"{method}-*"))


@pytest.fixture(scope="module")
def app(runs, tmp_path_factory) -> ServeApp:
    return ServeApp(find_models([runs]), workdir=tmp_path_factory.mktemp("serve-labels"))


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _known_object(spec, names: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """A validation image, the interior of its largest seen thing, and that thing's name index.

    Seen things are what the projection baseline learns best, and an interior (the mask eroded
    by one pixel) is free of the boundary pixels any model may get wrong.
    """
    split = spec.class_split()
    seen_things = [c for c in range(len(spec.things)) if c not in split.unseen]
    best = None
    for i in range(8):
        r = render(spec, "val", i)
        for c in seen_things:
            interior = ndimage.binary_erosion(r.semantic == c)
            if best is None or interior.sum() > best[1].sum():
                best = (r.image, interior, names.index(spec.class_names[c]))
    assert best is not None and best[1].sum() >= 20
    return best


def test_find_models_labels_each_model_and_names_bad_paths(runs, tmp_path, monkeypatch):
    entries = find_models([runs])
    assert sorted(e.label for e in entries) == ["oracle", "projection"]
    proj = next(e for e in entries if e.method == "projection")
    assert not proj.supervised and next(e for e in entries if e.method == "oracle").supervised
    assert proj.unseen == ("blue square",) and "red circle" in proj.seen
    # A checkpoint, a run directory and the directory above both name the same models once.
    proj_dir = _run(runs, "projection")
    again = find_models([proj_dir / "model.safetensors", proj_dir, runs])
    assert sorted(e.label for e in again) == ["oracle", "projection"]
    # Two runs of one method are told apart by their run directory.
    shutil.copytree(proj_dir, tmp_path / "other" / "projection-b")
    both = find_models([proj_dir, tmp_path / "other"])
    assert [e.label for e in both] == [f"projection ({proj_dir.name})", "projection (projection-b)"]
    with pytest.raises(ServeError, match=r"nowhere does not exist: expected a model.safetensors"):
        find_models([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ServeError, match=r"empty: no model.safetensors in it or below"):
        find_models([tmp_path / "empty"])
    monkeypatch.chdir(tmp_path)  # no runs/demo here: no models, and no error
    assert find_models([]) == []


def test_names_are_checked_and_marked_seen_or_unseen(app):
    assert parse_names(" red circle ,Blue Square,purple star ") == (
        "red circle",
        "Blue Square",
        "purple star",
    )
    for text, message in [
        ("", "no class names: type at least one"),
        (" , ", "no class names"),
        ("red circle,, blue square", "class names: entry 1 is '', expected a non-empty name"),
        ("red circle, Red Circle", "duplicated class name 'Red Circle' (entries 0 and 1)"),
        (",".join(f"n{i}" for i in range(MAX_NAMES + 1)), "256 class names: a label map holds"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_names(text)
    assert len(parse_names(",".join(f"n{i}" for i in range(MAX_NAMES)))) == MAX_NAMES
    proj, oracle = app.entries["projection"], app.entries["oracle"]
    names = ["Red Circle", "blue square", "purple star"]
    assert name_roles(names, proj) == ["seen", "unseen (held out)", "unseen (new name)"]
    assert name_roles(names, oracle) == ["seen", "seen", "unseen (new name)"]
    html = marks_html(", ".join(names), proj)
    assert html.count('data-role="seen"') == 1 and "blue square: unseen (held out)" in html
    assert "duplicated class name" in marks_html("a, A", proj)


def test_examples_are_the_models_world_validation_images_with_ground_truth(app, tmp_path):
    spec, note = examples_world(list(app.entries.values()))
    assert spec.name == "tiny" and note is None
    examples = make_examples(spec, tmp_path, count=3)
    r = render(spec, "val", 2)
    np.testing.assert_array_equal(np.asarray(Image.open(examples[2].image)), r.image)
    truth = np.asarray(Image.open(examples[2].truth))
    want = (r.image * 0.45 + palette(spec.num_classes)[r.semantic] * 0.55).astype(np.uint8)
    assert np.abs(truth[::8, ::8].astype(int) - want).max() <= 1  # 32 px shown at 256
    assert examples[2].names == tuple(spec.class_names)
    present = [spec.class_names[c] for c in np.unique(r.semantic)]
    assert examples[2].caption == "val 2: " + ", ".join(present)
    gone = replace(app.entries["projection"], world=str(tmp_path / "deleted.yaml"))
    spec, note = examples_world([gone])
    assert spec.name == "default" and "deleted.yaml does not exist" in note


def test_segment_gives_the_predictor_labels_shares_legend_and_label_png(
    app, runs, tiny_world, tmp_path
):
    spec = load_spec(tiny_world)
    names = list(spec.class_names)[::-1]
    image, interior, k = _known_object(spec, names)
    path = _png(tmp_path / "val.png", image)
    seg = app.segment(path, ", ".join(names), "projection")
    expected = Predictor.from_checkpoint(_run(runs, "projection")).predict(image, names)
    np.testing.assert_array_equal(seg.label, expected)
    counts = np.bincount(expected.ravel(), minlength=len(names))
    np.testing.assert_allclose(seg.shares, counts / expected.size * 100)
    # The overlay is the image blended 45/55 with the label colours, enlarged 8x (32 -> 256 px).
    assert seg.overlay.shape == (256, 256, 3)
    want = (image * 0.45 + palette(len(names))[expected] * 0.55).astype(np.uint8)
    assert np.abs(seg.overlay[::8, ::8].astype(int) - want).max() <= 1
    assert (expected[interior] == k).mean() > 0.9  # the model does label the known object
    rows = legend_html(seg)
    assert rows.count("<tr data-class=") == len(names)
    listed = re.findall(r'<tr data-class="([^"]+)"', rows)  # largest share first, ties as typed
    assert listed == sorted(names, key=lambda n: (-counts[names.index(n)], names.index(n)))
    assert '<td class="zs-name">blue square</td><td>unseen (held out)</td>' in rows
    label_png = app.save_label(seg, path)
    assert label_png.name == "val_label.png" and label_png.parent.parent == app.workdir
    with Image.open(label_png) as png:
        assert png.mode == "P"
        np.testing.assert_array_equal(np.asarray(png), expected)
        assert json.loads(png.text["zeroseg:classes"]) == names
        pal = np.array(png.getpalette()[: 3 * len(names)]).reshape(-1, 3)
    np.testing.assert_array_equal(pal, palette(len(names)))
    assert app.save_label(seg, path) != label_png  # a later download never replaces this one


def test_bad_input_gives_a_message_and_the_next_request_works(app, runs, tmp_path):
    good = _png(tmp_path / "ok.png", np.full((32, 32, 3), 120, np.uint8))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    small = ServeApp(list(app.entries.values()), workdir=tmp_path / "l", max_pixels=32 * 32)
    big = _png(tmp_path / "big.png", np.zeros((33, 40, 3), np.uint8))
    cases = [
        (app, (text, "red circle", "projection"), "notes.txt is not an image PIL can read"),
        (app, (None, "red circle", "projection"), "no image: upload one or click an example"),
        (
            small,
            (big, "red circle", "projection"),
            "big.png: 40×33 is 1,320 pixels; this server takes at most 1,024 (e.g. 32×32)",
        ),
        (app, (good, "", "projection"), "no class names"),
        (app, (good, "a, b, A", "projection"), "duplicated class name 'A'"),
        (app, (good, ",".join(f"n{i}" for i in range(300)), "projection"), "300 class names"),
        (
            app,
            (good, "a", "zs3net"),
            "no model 'zs3net'; this server has ['oracle', 'projection']",
        ),
        (
            ServeApp([], workdir=tmp_path / "e"),
            (good, "a", None),
            "No trained models found in runs/demo. Run `make demo`",
        ),
    ]
    for server, args, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):  # ServeError, ClassSplitError
            server.segment(*args)
        seg = app.segment(good, "red circle, flat gray ground", "projection")  # still answers
        assert seg.label.shape == (32, 32) and seg.names == ("red circle", "flat gray ground")
    assert small.segment(
        _png(tmp_path / "edge.png", np.zeros((32, 32, 3), np.uint8)), "a", "oracle"
    )
    with pytest.raises(ServeError, match=r"choose two or more models to compare \(1 chosen"):
        app.compare(good, "a, b", ["oracle", "oracle"])
    segs = app.compare(good, "red circle, blue square", ["projection", "oracle"])
    assert [s.model for s in segs] == ["projection", "oracle"]
    assert segs[0].roles == ["seen", "unseen (held out)"] and segs[1].roles == ["seen", "seen"]


def test_cli_serve_names_a_missing_path_before_starting(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nowhere")]) == 2
    assert "nowhere does not exist: expected a model.safetensors" in capsys.readouterr().err
    assert build_parser().parse_args(["serve"]).max_pixels == DEFAULT_MAX_PIXELS
    with pytest.raises(ServeError, match="--max-pixels must be a positive pixel count, got 0"):
        ServeApp([], workdir=tmp_path, max_pixels=0)


def test_gradio_is_imported_only_by_zeroseg_serve():
    code = "import sys, zeroseg, zeroseg.cli, zeroseg.serve; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _browser_or_skip() -> None:
    missing = [
        f"Python package {m}" for m in ("selenium", "gradio") if not importlib.util.find_spec(m)
    ]
    missing += [
        f"{p} (Debian: apt-get install chromium chromium-driver)"
        for p in (CHROMIUM, CHROMEDRIVER)
        if not p.exists()
    ]
    if missing:
        reason = "no headless browser test without " + ", ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def test_the_page_says_which_command_makes_models_when_there_are_none(tmp_path, capsys):
    _browser_or_skip()
    from zeroseg.serve_page import serve

    with socket.socket() as taken:  # the port is busy, so serve() stops right after the page
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            ServeError, match=f"cannot serve on 127.0.0.1:{port}: the port is taken"
        ):
            serve([], port=port, max_pixels=1024)
    assert f"zeroseg serve: {NO_MODELS}" in capsys.readouterr().out
    from zeroseg.serve_page import build_page

    page = build_page(ServeApp([], workdir=tmp_path), [], NO_MODELS)
    notice = [b for b in page.blocks.values() if getattr(b, "elem_id", None) == "zs-notice"]
    assert len(notice) == 1 and "Run `make demo`" in notice[0].value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(runs):
    """``zeroseg serve RUNS`` in a child process on a free port; yields its URL."""
    _browser_or_skip()
    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "zeroseg.cli", "serve", str(runs), "--port", str(port)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300  # generous: a saturated 2-core machine starts slowly
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"zeroseg serve did not answer on {url}:\n{''.join(lines)}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def browser(tmp_path):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,1500",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()


SHOWN_PNG = """
const img = document.querySelector(arguments[0]);
if (!img || !img.complete || !img.naturalWidth) return null;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
c.getContext('2d').drawImage(img, 0, 0);
return c.toDataURL('image/png');
"""


def test_the_page_segments_an_uploaded_image_in_a_real_browser(
    server, browser, tiny_world, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    spec = load_spec(tiny_world)
    names = list(spec.class_names)[::-1]
    image, interior, k = _known_object(spec, names)
    png = _png(tmp_path / "val.png", image)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    wait = WebDriverWait(browser, 180)  # a ceiling for a saturated machine, not an expectation

    def status(elem_id: str = "zs-status") -> str:
        return browser.find_element(By.ID, elem_id).text

    browser.get(server)
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#zs-upload input[type=file]"))
    upload.send_keys(str(text))  # a non-image: a message in the page, nothing else
    wait.until(lambda d: "notes.txt is not an image" in status())
    browser.find_element(By.CSS_SELECTOR, "#zs-upload button[aria-label=Clear]").click()
    wait.until(lambda d: not status())
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#zs-upload input[type=file]"))
    upload.send_keys(str(png))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#zs-preview img"))
    browser.find_element(By.CSS_SELECTOR, "#zs-model input").click()  # oracle is first
    wait.until(
        lambda d: d.find_element(By.XPATH, "//li[@role='option'][contains(., 'projection')]")
    ).click()
    box = browser.find_element(By.CSS_SELECTOR, "#zs-names textarea")
    box.send_keys("red circle, Red Circle")  # duplicated: the message, then a good request
    browser.find_element(By.ID, "zs-run").click()
    wait.until(lambda d: "duplicated class name 'Red Circle'" in status())
    box.clear()
    box.send_keys(", ".join(names))
    wait.until(
        lambda d: (
            "blue square: unseen (held out)"
            in d.find_element(By.ID, "zs-marks").get_attribute("textContent")
        )
    )
    browser.find_element(By.ID, "zs-run").click()
    wait.until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#zs-legend tr[data-class]")) == len(names)
    )
    cells = browser.find_elements(By.CSS_SELECTOR, "#zs-legend td.zs-name")
    legend = [e.get_attribute("textContent") for e in cells]  # rows may be scrolled out of view
    assert sorted(legend) == sorted(names)
    assert "projection: 32×32 px, 7 names (6 seen, 1 unseen) in" in status()
    shown = wait.until(lambda d: d.execute_script(SHOWN_PNG, "#zs-overlay img"))
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown.split(",", 1)[1]))))
    assert pixels.shape[:2] == (256, 256)  # 32 px enlarged 8x, as the server sent it
    got = pixels[::8, ::8, :3].astype(int)[interior]
    want = (image[interior] * 0.45 + palette(len(names))[k] * 0.55).astype(int)
    assert (np.abs(got - want).max(axis=1) <= 1).mean() > 0.9, "the known object's label colour"
    browser.save_screenshot(str(tmp_path / "serve.png"))
    assert Image.open(tmp_path / "serve.png").size[0] >= 1000

    browser.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Compare')]").click()
    browser.find_element(By.ID, "zs-compare").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#zs-side img")) == 2)
    heads = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#zs-compare-table th")]
    assert heads[2:] == ["oracle", "projection"]

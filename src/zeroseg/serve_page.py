"""The ``zeroseg serve`` page, laid out with Gradio over :mod:`zeroseg.serve`.

Imported only by ``zeroseg serve`` (Gradio is the optional extra ``zeroseg[web]``), never by
``import zeroseg``. The page never reaches the internet: analytics off, no share link, the
theme's fonts are local, and the server binds to the address given (127.0.0.1 by default).

Layout: the image (upload, or a click on a ShapeWorld example, which also shows its ground
truth) and the comma-separated names sit above two tabs. "Segment" runs one model and shows the
overlay, a legend (colour, name, seen/unseen for that model, pixel share), the time taken and
the label PNG to download; "Compare" runs two or more models side by side.
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio reads it at import

import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from zeroseg.errors import USER_ERRORS  # noqa: E402
from zeroseg.serve import (  # noqa: E402
    NO_MODELS,
    Example,
    ModelEntry,
    ServeApp,
    ServeError,
    compare_html,
    enlarge,
    examples_world,
    legend_html,
    make_examples,
    marks_html,
)

MAX_UPLOAD = "100mb"  # Gradio refuses larger uploads itself, before they fill the disk
CSS = ".zs-legend td, .zs-compare td, .zs-legend th, .zs-compare th {padding: 2px 8px}"
IMAGE_HEIGHT = 280  # px on the page; images keep their aspect ratio
LOCAL_BUTTONS = ["download", "fullscreen"]  # no "share": it posts to Hugging Face
# Fixed options of Gradio's launch: no public share link and no browser opened (a local server
# only); serve() blocks itself, after printing where the page is (quiet: no banner of Gradio's);
# errors shown in the page; no server-side rendering (it would start a Node process).
LAUNCH_OPTIONS = {
    "share": False,
    "inbrowser": False,
    "prevent_thread_lock": True,
    "quiet": True,
    "show_error": True,
    "ssr_mode": False,
}
INTRO = (
    "# zeroseg: segment an image into any class names\n"
    "Upload an image or click an example, type class names separated by commas, choose a "
    "model. Names the model was trained with pixel labels for are *seen*; every other name is "
    "*unseen* and placed only through its text embedding."
)


def _failure(e: Exception) -> str:
    """The status line for a failed request; anything unexpected is also logged with its trace."""
    if isinstance(e, USER_ERRORS):
        return f"**Error:** {e}"
    traceback.print_exc()
    return f"**Internal error** ({type(e).__name__}: {e}); the server keeps running."


def theme() -> gr.themes.Base:
    """Gradio's default look with system fonts only: the page fetches nothing from outside."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )


def _shown_image(label: str, elem_id: str) -> gr.Image:
    """An output image of the page: PNG, a fixed height, local buttons only, not editable."""
    return gr.Image(
        label=label,
        format="png",
        height=IMAGE_HEIGHT,
        buttons=LOCAL_BUTTONS,
        interactive=False,
        elem_id=elem_id,
    )


def build_page(app: ServeApp, examples: Sequence[Example], notice: str | None = None) -> gr.Blocks:
    """The Blocks page over ``app``; ``notice`` (e.g. no models found) is shown at the top."""
    labels = list(app.entries)
    # Uploads and outputs Gradio copies to its cache are deleted after an hour (checked hourly).
    with gr.Blocks(title="zeroseg", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(INTRO)
        if notice:
            gr.Markdown(f"**{notice}**", elem_id="zs-notice")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", type="filepath", height=120, elem_id="zs-upload")
                gallery = gr.Gallery(
                    value=[(str(e.image), e.caption) for e in examples],
                    label="Examples: ShapeWorld validation images (click one)",
                    columns=6,
                    height=130,
                    allow_preview=False,
                    format="png",
                    elem_id="zs-examples",
                )
            with gr.Column():
                names = gr.Textbox(
                    label="Class names (comma-separated)",
                    lines=2,
                    max_lines=4,
                    placeholder="red circle, blue square, striped gray ground",
                    elem_id="zs-names",
                )
                marks = gr.HTML(marks_html("", None), elem_id="zs-marks")
        with gr.Row():
            preview = _shown_image("Input", "zs-preview")
            truth = _shown_image("Ground truth (examples, in the example's names)", "zs-truth")
        with gr.Tabs():
            with gr.Tab("Segment", id="segment"):
                with gr.Row():
                    model = gr.Dropdown(
                        choices=labels,
                        value=labels[0] if labels else None,
                        label="Model",
                        elem_id="zs-model",
                        scale=3,
                    )
                    run = gr.Button("Segment", variant="primary", elem_id="zs-run", scale=1)
                status = gr.Markdown(elem_id="zs-status")
                with gr.Row():
                    result = _shown_image("Labels over the image", "zs-overlay")
                    with gr.Column():
                        legend = gr.HTML(elem_id="zs-legend")
                        download = gr.File(
                            label="Label PNG (pixel value k is the k-th name)",
                            elem_id="zs-download",
                        )
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    chosen = gr.CheckboxGroup(
                        choices=labels,
                        value=labels[:3],
                        label="Models (two or more)",
                        elem_id="zs-models",
                        scale=3,
                    )
                    run_all = gr.Button("Compare", variant="primary", elem_id="zs-compare", scale=1)
                compare_status = gr.Markdown(elem_id="zs-compare-status")
                side = gr.Gallery(
                    label="Side by side",
                    columns=4,
                    allow_preview=False,
                    format="png",
                    elem_id="zs-side",
                )
                table = gr.HTML(elem_id="zs-compare-table")

        def on_upload(path):
            if path is None:
                return None, None, ""
            try:
                return enlarge(app.read(path)), None, ""
            except Exception as e:  # noqa: BLE001 - every failure becomes a message in the page
                return None, None, _failure(e)

        def on_example(evt: gr.SelectData):
            ex = examples[evt.index]
            with Image.open(ex.image) as img:
                image = np.asarray(img.convert("RGB"))
            return str(ex.image), enlarge(image), str(ex.truth), ", ".join(ex.names)

        def on_marks(text, label):
            return marks_html(text, app.entries.get(label))

        def on_segment(path, text, label):
            try:
                seg = app.segment(path, text, label)
                return seg.overlay, legend_html(seg), str(app.save_label(seg, path)), seg.summary()
            except Exception as e:  # noqa: BLE001 - every failure becomes a message in the page
                return None, "", None, _failure(e)

        def on_compare(path, text, chosen_labels):
            try:
                segs = app.compare(path, text, chosen_labels)
            except Exception as e:  # noqa: BLE001 - every failure becomes a message in the page
                return [], "", _failure(e)
            shown = [(s.overlay, f"{s.model} ({s.seconds:.2f} s)") for s in segs]
            done = "; ".join(s.summary() for s in segs)
            return shown, compare_html(segs), done

        # Two public endpoints (also for gradio_client: benchmarks/bench_serve.py); the rest
        # only drive the page.
        private = {"api_visibility": "private"}
        upload.upload(on_upload, [upload], [preview, truth, status], **private)
        upload.clear(lambda: (None, None, ""), None, [preview, truth, status], **private)
        gallery.select(on_example, None, [upload, preview, truth, names], **private)
        names.change(on_marks, [names, model], [marks], **private)
        model.change(on_marks, [names, model], [marks], **private)
        # Predictions queue one at a time across both tabs: the models and the text encoder are
        # shared, and on a CPU two at once would only each take twice as long.
        one = {"concurrency_id": "models", "concurrency_limit": 1}
        outputs = [result, legend, download, status]
        run.click(on_segment, [upload, names, model], outputs, api_name="segment", **one)
        names.submit(on_segment, [upload, names, model], outputs, **private, **one)
        run_all.click(
            on_compare,
            [upload, names, chosen],
            [side, table, compare_status],
            api_name="compare",
            **one,
        )
    return page


def serve(
    entries: Sequence[ModelEntry],
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "cpu",
    max_pixels: int,
) -> None:
    """Starts the page, loads the models in the background, and serves until interrupted.

    Args:
        entries: the models to offer, from :func:`zeroseg.serve.find_models` (may be empty: the
            page then says which command trains some).
    """
    start = time.perf_counter()
    if not entries:
        print(f"zeroseg serve: {NO_MODELS}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="zeroseg-serve-"))
    app = ServeApp(entries, workdir=workdir / "labels", device=device, max_pixels=max_pixels)
    spec, note = examples_world(entries)
    if note:
        print(f"zeroseg serve: {note}", flush=True)
    examples = make_examples(spec, workdir / "examples")
    page = build_page(app, examples, NO_MODELS if not entries else None)
    try:
        page.launch(
            server_name=host,
            server_port=port,
            allowed_paths=[str(workdir)],
            max_file_size=MAX_UPLOAD,
            theme=theme(),
            css=CSS,
            **LAUNCH_OPTIONS,
        )
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServeError(
            f"cannot serve on {host}:{port}: the port is taken or the address is not this "
            "machine's; choose another --port or --host"
        ) from None
    listed = ", ".join(app.entries) or "none"
    print(
        f"zeroseg serve: http://{host}:{port} ({len(entries)} models: {listed}; examples from "
        f"world {spec.name!r}; up in {time.perf_counter() - start:.1f} s)",
        flush=True,
    )

    def warm():
        try:
            t = time.perf_counter()
            app.warm()
            if entries:
                print(
                    f"zeroseg serve: models and text encoder loaded in {time.perf_counter() - t:.1f} s",
                    flush=True,
                )
        except Exception as e:  # noqa: BLE001 - a model that fails to load is reported per request
            print(f"zeroseg serve: loading the models failed: {e}", file=sys.stderr, flush=True)

    threading.Thread(target=warm, daemon=True).start()
    try:
        page.block_thread()  # until Ctrl-C
    finally:
        page.close()
        shutil.rmtree(workdir, ignore_errors=True)

"""Inference cost of ZegCLIP (Zhou et al., CVPR 2023) at the paper's scale on this CPU.

The VOC 15+5 preset (ViT-B/16 at 512x512, 10 deep prompt tokens in all 12 layers, decoder
3 layers / 8 heads / width 512), randomly initialised, batch 1, 2 threads. For fp32 and bf16
autocast: ms/image of ``transformers.CLIPVisionModel`` (the reference encoder alone, same
architecture, random weights), of zeroseg's frozen encoder alone (``forward_features``, no
prompts) and of the full ZegCLIP forward with 20, 171 and 847 classes: ``full`` is the
segmentation of an image (``labels``, what ``zeroseg predict`` runs: prompted encoder,
relationship descriptor, decoder, the sigmoid and seen-score reduction, upsampling to 512 of the
classes that can win somewhere, argmax), ``scores`` the (K, 512, 512) per-class probabilities
(``scores``, what evaluation reads). In bf16, ``encoder_hf_weights`` is ``CLIPVisionModel``
converted to bf16 outright (weights, layer norms and residual stream), a second reference that
rounds more than autocast, and ``encoder_cast_once`` zeroseg's encoder with its matmul weights
cast to bf16 once (``zeroseg.models.bf16_weights``, as ZegCLIP runs its frozen encoder; the same
bits as ``encoder``). The vocabulary stays the
same across timed calls, as when serving or evaluating a dataset: text-side work cached per
vocabulary is done once, in the warm-up. All forwards alternate within each round so drifting
load falls on all alike; figures are medians. Also: analytic FLOPs, achieved GFLOP/s against a
measured matmul peak, the median minor page faults per forward (``faults``: fresh pages the
kernel zero-fills), and the peak RSS of a whole process that builds the model and runs one
512x512 inference (a fresh child process per configuration).

    .venv/bin/python benchmarks/bench_zegclip.py [--reps 7] [--warmup 2] [--out FILE.json]

``--out`` writes every figure as JSON (``ms_encoder_hf_bf16``, ``ms_full_bf16_20``, ...,
``peak_rss_mb``, with the repeats, threads and load averages they were taken under).

FLOPs (multiply-add = 2): the encoder as ``bench_clip_encoder.encoder_flops`` with the prompt
tokens added to the sequence; per decoder layer on K queries and N patches of width C:
q and output projections 4KC^2, k and v projections 4NC^2, scores and weighted sum 4KNC, MLP
16KC^2; plus the relationship-descriptor projection 2K(2D)C.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from bench_clip_encoder import (  # noqa: E402
    HF,
    _loadavg,
    build_models,
    encoder_flops,
    matmul_peak,
    runners,
    summarise,
    time_interleaved,
)

from zeroseg.bench_train import status_mib  # noqa: E402
from zeroseg.config import load_config  # noqa: E402
from zeroseg.data.classes import ClassSplit  # noqa: E402
from zeroseg.models.heads.mask_scores import candidate_classes  # noqa: E402
from zeroseg.runner import build_method  # noqa: E402

THREADS = 2
PRESET = "zegclip_vitb16_20k_voc-15+5"
SIZE = 512
CLASS_COUNTS = (20, 171, 847)
MODES = ("fp32", "bf16")


def zegclip_flops(method, k: int, size: int) -> float:
    vis = method.encoder.config
    prompts = 0 if method.prompts is None else method.prompts.shape[1]
    grid = size // vis.patch_size
    n_enc = grid * grid + 1 + prompts
    # encoder_flops counts N = patches + 1; add the prompt tokens' share through a wider image.
    enc = encoder_flops(vis, size, size, projected=grid * grid + 1)
    c, hidden = vis.width, int(vis.width * vis.mlp_ratio)
    enc += vis.layers * (
        prompts * (2 * c * 4 * c + 4 * c * hidden) + 4 * (n_enc**2 - (n_enc - prompts) ** 2) * c
    )
    d = method.decoder.config
    n, w = grid * grid, d.width
    per_layer = 4 * k * w * w + 4 * n * w * w + 4 * k * n * w + 4 * k * w * int(w * d.mlp_ratio)
    q = 2 * k * method.decoder.q_proj.in_features * w
    proj = 0 if not d.input_proj else 2 * n * method.encoder.config.output_dim * w
    return enc + d.layers * per_layer + q + proj


def build(k: int = 20):
    """The preset's model, random weights (the same compute), built for a K-class split."""
    cfg = load_config(PRESET, ["model.pretrained=null"])
    split = ClassSplit(tuple(f"class {i}" for i in range(k)), unseen=tuple(range(k - 5, k)))
    torch.manual_seed(0)
    return build_method(cfg, split, 512).eval()


def vocabulary(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, 512) unit class embeddings and the (K,) seen mask (the last 5 unseen)."""
    g = torch.Generator().manual_seed(k)
    text = torch.nn.functional.normalize(torch.randn(k, 512, generator=g), dim=-1)
    return text, torch.arange(k) < k - 5


def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)


def reference_scores(model, images: torch.Tensor, text: torch.Tensor, seen: torch.Tensor):
    """The training-time path to scores: every decoder layer, whole-tensor passes."""
    from zeroseg.methods.zegclip import reduce_seen

    logits = model.mask_logits(images, text)[-1]
    logits = torch.nn.functional.interpolate(
        logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False
    )
    return reduce_seen(logits, seen, model.reduction(), sigmoid=model.cfg.nel)


def rss_child(mode: str, k: int, threads: int, kind: str) -> None:
    """In a fresh process: the peak RSS (MiB) of building the model and one 512x512 inference
    (``kind``: ``full``, the segmentation, or ``scores``)."""
    torch.set_num_threads(threads)
    model = build()
    text, seen = vocabulary(k)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=mode == "bf16"):
        (model.labels if kind == "full" else model.scores)(images(), text, seen)
    print(f"{status_mib('VmHWM'):.1f}")


def _flops_key(name: str) -> str:
    """The FLOP count a timed forward does: encoder_hf_weights -> encoder_hf, scores_K and
    ref_full_K -> full_K."""
    if name.startswith("encoder"):
        return name.removesuffix("_weights").removesuffix("_cast_once")
    return "full_" + name.rsplit("_", 1)[1]


def time_all(args, modes: list[str]) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Interleaved median ms/image of every forward: (figures, matmul peaks, FLOPs)."""
    peaks = {m: matmul_peak(torch.float32 if m == "fp32" else torch.bfloat16) for m in modes}
    print("matmul peak (2048^3): " + ", ".join(f"{m} {p:.1f} GFLOP/s" for m, p in peaks.items()))
    model = build()
    _, hf = build_models()  # transformers.CLIPVisionModel, ViT-B/16, random weights
    x_img = images()
    x = (x_img.float() - model.mean) / model.std
    # CLIPVisionModel converted to bf16 outright: bench_clip_encoder's bf16w (a converted copy)
    hf_bf16 = runners(None, hf, x, "bf16w")[HF] if "bf16" in modes else None
    vocab = {k: vocabulary(k) for k in CLASS_COUNTS}
    flops = {
        "encoder": encoder_flops(model.encoder.config, SIZE, SIZE, projected=(SIZE // 16) ** 2 + 1)
    }
    flops["encoder_hf"] = encoder_flops(model.encoder.config, SIZE, SIZE, projected=0)
    flops.update({f"full_{k}": zegclip_flops(model, k, SIZE) for k in CLASS_COUNTS})

    figures: dict[str, float] = {}
    print(
        f"{'mode':5} {'forward':18} {'ms/image':>9} {'min-max ms':>13} {'GFLOP':>7} {'GFLOP/s':>8} "
        f"{'% peak':>7} {'faults':>7}"
    )
    for mode in modes:

        def wrap(fn, bf16=mode == "bf16"):
            def run():
                with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    return fn()

            return run

        fns = {
            "encoder_hf": wrap(lambda: hf(pixel_values=x, interpolate_pos_encoding=True)),
            "encoder": wrap(lambda: model.encoder.forward_features(x)),
        }
        if mode == "bf16":  # the frozen encoder as ZegCLIP runs it: weights cast once
            fns["encoder_cast_once"] = wrap(
                lambda: model._bf16_weights.call(model.encoder, "forward_features", x)
            )
            fns["encoder_hf_weights"] = hf_bf16
        for k in CLASS_COUNTS:
            # the segmentation (what predict returns): classes that cannot win anywhere are
            # never upsampled (zeroseg.models.heads.mask_scores.sigmoid_labels)
            fns[f"full_{k}"] = wrap(lambda k=k: model.labels(x_img, *vocab[k]))
            fns[f"scores_{k}"] = wrap(lambda k=k: model.scores(x_img, *vocab[k]))
            if args.reference:
                fns[f"ref_full_{k}"] = wrap(lambda k=k: reference_scores(model, x_img, *vocab[k]))
        times = time_interleaved(fns, reps=args.reps, warmup=args.warmup)
        for name in fns:
            wall, low, high, cpu, faults = summarise(times[name])
            if name.startswith("encoder"):
                key = f"{name}_{mode}"
            else:  # full_171 -> full_bf16_171
                kind, k = name.rsplit("_", 1)
                key = f"{kind}_{mode}_{k}"
            figures[f"ms_{key}"] = wall * 1e3
            figures[f"cpu_ms_{key}"] = cpu * 1e3
            figures[f"faults_{key}"] = faults
            work = flops[_flops_key(name)]
            gfs = work / wall / 1e9
            print(
                f"{mode:5} {name:18} {wall * 1e3:9.1f} {low * 1e3:6.0f}-{high * 1e3:<6.0f}"
                f" {work / 1e9:7.1f} {gfs:8.1f} {100 * gfs / peaks[mode]:6.1f}% {faults:7.0f}"
            )
        for k in CLASS_COUNTS:  # how many classes the segmentation upsampled
            with torch.inference_mode():
                logits = model.predict_logits(x_img, vocab[k][0])[0].float()
            count = len(candidate_classes(logits, model.seen_shift(vocab[k][1])))
            figures[f"upsampled_classes_{mode}_{k}"] = count
            print(f"{mode:5} full_{k}: {count} of {k} classes can win somewhere: upsampled")
    return figures, peaks, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="timed runs per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--modes", default="fp32,bf16", help=f"comma-separated, of {MODES}")
    parser.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("--no-rss", action="store_true", help="skip the per-config RSS children")
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help="torch threads (default 2, the machine's cores; 1 when other jobs load the CPU: "
        "then process CPU time, cpu_ms_*, is the figure that load distorts least)",
    )
    parser.add_argument(
        "--no-timing",
        action="store_true",
        help="only the RSS children (memory needs no idle machine; timings do)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also time the training-time path (every decoder layer, whole-tensor upsampling and "
        "sigmoid: the inference code before issue 22), interleaved, as ms_ref_full_MODE_K",
    )
    parser.add_argument(
        "--rss-child", nargs=3, metavar=("MODE", "K", "KIND"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), args.threads, args.rss_child[2])
        return
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"unknown modes {unknown}; valid: {MODES}")
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    torch.set_num_threads(args.threads)
    load_before = _loadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, load average {load_before}")
    figures: dict[str, float] = {}
    peaks: dict[str, float] = {}
    flops: dict[str, float] = {}
    if not args.no_timing:
        figures, peaks, flops = time_all(args, modes)
    load_after = _loadavg()

    rss = {}
    if not args.no_rss:
        for mode in modes:
            for k in CLASS_COUNTS:
                for kind in ("full", "scores"):
                    cmd = [sys.executable, __file__, "--rss-child", mode, str(k), kind]
                    cmd += ["--threads", str(args.threads)]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                    name = (
                        f"peak_rss_mb_{mode}_{k}"
                        if kind == "full"
                        else f"peak_rss_mb_scores_{mode}_{k}"
                    )
                    rss[name] = float(out.split()[-1])
                    print(
                        f"peak RSS, build + one 512x512 {mode} {kind} inference, {k} classes: "
                        f"{rss[name]:.0f} MiB"
                    )

    for mode in modes if figures else ():
        hf_ms = figures[f"ms_encoder_hf_{mode}"]
        for kind in ("full", "scores"):
            r20 = figures[f"ms_{kind}_{mode}_20"]
            print(
                f"{mode}: {kind}(20)/CLIPVisionModel = {r20 / hf_ms:.3f}; "
                + ", ".join(
                    f"{kind}({k})/{kind}(20) = {figures[f'ms_{kind}_{mode}_{k}'] / r20:.3f}"
                    for k in CLASS_COUNTS[1:]
                )
            )
        if mode == "bf16":
            hf_w = figures["ms_encoder_hf_weights_bf16"]
            print(
                f"bf16: full(20)/CLIPVisionModel converted to bf16 = "
                f"{figures['ms_full_bf16_20'] / hf_w:.3f}"
            )
    print(f"load average before {load_before}, after {load_after}")
    if args.out:
        result = {
            **figures,
            **rss,
            "peak_rss_mb": max(rss.values()) if rss else None,
            **{
                f"ratio_full20_over_hf_{m}": figures[f"ms_full_{m}_20"]
                / figures[f"ms_encoder_hf_{m}"]
                for m in modes
                if figures
            },
            "repeats": args.reps,
            "warmup": args.warmup,
            "statistic": "median per 512x512 image, batch 1: ms_* wall clock, cpu_ms_* process "
            "CPU time (all threads)",
            "threads": args.threads,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "matmul_peak_gflops": peaks,
            "gflop": {k: v / 1e9 for k, v in flops.items()},
            "torch": torch.__version__,
            "preset": PRESET,
            "weights": "random (same compute)",
        }
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(args.out)  # atomic: a partial file never replaces a good one
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

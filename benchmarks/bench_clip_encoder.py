"""Speed of zeroseg's CLIP image encoder against transformers.CLIPVisionModel on this CPU.

ViT-B/16 (Radford et al., 2021) at 512x512 (a 32x32 patch grid, 1025 tokens: ZegCLIP's input
size), batch 1, the same random weights in both implementations, 2 threads. Modes: ``fp32``;
``bf16`` = fp32 weights under ``torch.autocast(bfloat16)``; optionally ``bf16w`` = the models
converted to bfloat16 (no per-call weight casts). In fp32 two more rows run zeroseg's dense
forward with its inference ``Workspace`` turned off (fresh MLP and q/k/v buffers in every block,
addmm projections, as before session 36) and with the workspace but its block projections
through addmm instead of oneDNN (as in session 36), so both effects are measured in the same
interleaved rounds.
Reports ms/image (median of interleaved runs
after warm-up), the analytic FLOPs, the achieved GFLOP/s against a measured matmul peak, and
the peak RSS of each configuration (each measured in a fresh child process).

    .venv/bin/python benchmarks/bench_clip_encoder.py [--reps 9] [--size 512] [--modes fp32,bf16]

FLOPs count a multiply-add as 2. Per block on N tokens of width C and MLP width 4C: q/k/v,
output and MLP projections 2N(3C^2 + C^2 + 8C^2) = 24NC^2; attention scores and weighted sum
4N^2C. Patch embedding 2 * patches * 3p^2 * C; the projection 2 * C * D per projected token.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import NamedTuple
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from zeroseg import bench_train  # noqa: E402
from zeroseg.bench_train import status_mib  # noqa: E402
from zeroseg.models.backbones import clip  # noqa: E402
from zeroseg.models.backbones.clip import (  # noqa: E402
    CLIP_PRESETS,
    CLIPVisionConfig,
    VisionTransformer,
)
from zeroseg.models.pretrained import hf_to_zeroseg  # noqa: E402

THREADS = 2
MODES = ("fp32", "bf16", "bf16w")
OURS = "zeroseg forward (image embedding)"
OURS_DENSE = "zeroseg forward_features (dense)"
# fp32 only: forward_features with its inference Workspace turned off (fresh buffers every block)
OURS_NO_WORKSPACE = "zeroseg dense, no workspace"
# fp32 only: the workspace with its projections through addmm (torch's BLAS) instead of oneDNN
OURS_ADDMM = "zeroseg dense, addmm projections"
HF = "transformers CLIPVisionModel"


def encoder_flops(cfg: CLIPVisionConfig, height: int, width: int, *, projected: int) -> float:
    """FLOPs of one image through the encoder, with ``projected`` tokens projected to D."""
    c, p = cfg.width, cfg.patch_size
    patches = (height // p) * (width // p)
    n = patches + 1
    hidden = int(c * cfg.mlp_ratio)
    embed = 2 * patches * (3 * p * p) * c
    block = 2 * n * c * (3 * c + c) + 2 * 2 * n * c * hidden + 4 * n * n * c
    return embed + cfg.layers * block + 2 * projected * c * cfg.output_dim


def build_models() -> tuple[VisionTransformer, torch.nn.Module]:
    """Our encoder and transformers' CLIPVisionModel holding the same random ViT-B/16 weights."""
    from transformers import CLIPVisionConfig as HFVisionConfig
    from transformers import CLIPVisionModel

    cfg = CLIP_PRESETS["ViT-B/16"].vision
    torch.manual_seed(0)
    hf = CLIPVisionModel(
        HFVisionConfig(
            hidden_size=cfg.width,
            intermediate_size=int(cfg.width * cfg.mlp_ratio),
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            hidden_act="quick_gelu",
        )
    ).eval()
    ours = VisionTransformer(cfg).eval()
    # hf_to_zeroseg is the loader's own remapping. CLIPVisionModel has no projection, so ours
    # keeps its random one.
    mapped = hf_to_zeroseg({f"vision_model.{k}": v for k, v in hf.state_dict().items()})
    state = {k.removeprefix("visual."): v for k, v in mapped.items()}
    state["proj"] = ours.proj.detach().clone()
    ours.load_state_dict(state, strict=True)
    return ours, hf


def runners(
    ours: VisionTransformer | None,
    hf: torch.nn.Module | None,
    images: torch.Tensor,
    mode: str,
    *,
    in_place: bool = False,
) -> dict[str, Callable[[], object]]:
    """One no-argument callable per implementation, running one forward in ``mode``.

    For ``bf16w`` the models are converted to bfloat16: copies, unless ``in_place``.
    """
    if mode == "bf16w":
        convert = (lambda m: m) if in_place else copy.deepcopy
        ours = convert(ours).to(torch.bfloat16) if ours is not None else None
        hf = convert(hf).to(torch.bfloat16) if hf is not None else None
        images = images.to(torch.bfloat16)

    def wrap(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            autocast = mode == "bf16"
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                return fn()

        return run

    def patched(attribute: str, value: object) -> Callable[[], object]:
        """The dense forward with ``clip.Workspace.<attribute>`` set to ``value`` for the call."""

        def run() -> object:
            with mock.patch.object(clip.Workspace, attribute, value):
                return ours.forward_features(images)

        return run

    fns = {
        OURS: wrap(lambda: ours(images)),
        OURS_DENSE: wrap(lambda: ours.forward_features(images)),
        HF: wrap(lambda: hf(pixel_values=images, interpolate_pos_encoding=True)),
    }
    if mode == "fp32":  # the only mode with a workspace
        fns[OURS_NO_WORKSPACE] = wrap(
            patched("for_input", staticmethod(lambda x, owner=None: None))
        )
        fns[OURS_ADDMM] = wrap(patched("use_onednn", False))
    return fns


def time_interleaved(
    fns: dict[str, Callable[[], object]], *, reps: int, warmup: int
) -> dict[str, list[tuple[float, float, int]]]:
    """(wall seconds, process CPU seconds, minor page faults) per call. Implementations
    alternate within each round, in reversed order every other round, so drifting load on this
    shared CPU falls on all alike; CPU time (all threads) is less sensitive than wall time to
    other processes' load. A minor page fault is a fresh page the kernel maps and zero-fills on
    first touch, which buffers newly allocated by a forward cost."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[tuple[float, float, int]]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            wall, cpu = time.perf_counter(), time.process_time()
            fns[name]()
            times[name].append(
                (
                    time.perf_counter() - wall,
                    time.process_time() - cpu,
                    resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
                )
            )
    return times


class Summary(NamedTuple):
    """One implementation's timed calls: median, min and max wall seconds, median process CPU
    seconds, median minor page faults."""

    wall: float
    low: float
    high: float
    cpu: float
    faults: float


def summarise(runs: list[tuple[float, float, int]]) -> Summary:
    """The :class:`Summary` of ``time_interleaved``'s calls of one implementation."""
    walls = [w for w, _, _ in runs]
    return Summary(
        statistics.median(walls),
        min(walls),
        max(walls),
        statistics.median(c for _, c, _ in runs),
        statistics.median(f for _, _, f in runs),
    )


def matmul_peak(dtype: torch.dtype) -> float:
    """Median GFLOP/s of a 2048^3 matmul by wall time (the inference figures are wall time)."""
    return bench_train.matmul_peak(dtype, n=2048, reps=7, clock=time.perf_counter)


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def rss_child(impl: str, mode: str, size: int) -> None:
    """In a fresh process: resident memory with the model built, and its peak during a forward.

    Writing 5 to /proc/self/clear_refs resets the kernel's peak-RSS mark (VmHWM), so the peak
    read afterwards belongs to the forward pass, not to building the models.
    """
    torch.set_num_threads(THREADS)
    ours, hf = build_models()
    if impl == HF:
        ours = None
    else:
        hf = None
    gc.collect()
    fn = runners(ours, hf, torch.randn(1, 3, size, size), mode, in_place=True)[impl]
    gc.collect()
    before = status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    print(f"{before:.1f} {status_mib('VmHWM'):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="input side (multiple of 16)")
    parser.add_argument("--reps", type=int, default=9, help="timed runs per implementation")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--modes", default="fp32,bf16", help=f"comma-separated, of {MODES}")
    parser.add_argument("--no-rss", action="store_true", help="skip the per-config RSS children")
    parser.add_argument("--rss-child", nargs=2, metavar=("IMPL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1], args.size)
        return
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"unknown modes {unknown}; valid: {MODES}")

    torch.set_num_threads(THREADS)
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    ours, hf = build_models()
    print(f"transformers attention implementation: {hf.config._attn_implementation}")
    images = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = hf(pixel_values=images, interpolate_pos_encoding=True).pooler_output
        diff = (ours.forward_features(images)["cls"] - ref).abs().max().item()
    print(f"same weights: max |cls(zeroseg) - pooler_output(transformers)| = {diff:.2e} (fp32)")

    cfg, side = ours.config, args.size
    patches = (side // cfg.patch_size) ** 2
    flops = {
        OURS: encoder_flops(cfg, side, side, projected=1),
        OURS_DENSE: encoder_flops(cfg, side, side, projected=patches + 1),
        OURS_NO_WORKSPACE: encoder_flops(cfg, side, side, projected=patches + 1),
        OURS_ADDMM: encoder_flops(cfg, side, side, projected=patches + 1),
        HF: encoder_flops(cfg, side, side, projected=0),  # stops at the pooled class token
    }
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    peaks["bf16w"] = peaks["bf16"]
    print(
        f"ViT-B/16 at {side}x{side}: {patches + 1} tokens, {flops[OURS] / 1e9:.1f} GFLOP/image; "
        f"matmul peak (2048^3): fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s"
    )

    load_before = _loadavg()
    stats: dict[tuple[str, str], Summary] = {}
    for mode in modes:
        times = time_interleaved(
            runners(ours, hf, images, mode), reps=args.reps, warmup=args.warmup
        )
        for name, runs in times.items():
            stats[(name, mode)] = summarise(runs)
    load_after = _loadavg()

    rss: dict[tuple[str, str], tuple[float, float]] = {}
    if not args.no_rss:
        for name, mode in stats:
            command = [sys.executable, __file__, "--size", str(side), "--rss-child", name, mode]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            before, peak = out.split()[-2:]
            rss[(name, mode)] = (float(before), float(peak))

    header = (
        f"{'implementation':34} {'mode':5} {'ms/img':>7} {'min-max ms':>13} {'CPU ms':>7} "
        f"{'GFLOP/s':>7} {'%peak':>6} {'RSS MiB':>7} {'fwd+MiB':>7} {'faults':>7}"
    )
    print(
        f"\n{args.reps} timed runs each after {args.warmup} warm-up. ms/img: median wall time; "
        f"CPU ms: median process CPU time (both threads); faults: median minor page faults "
        f"per forward.\nLoad average before {load_before}, "
        f"after {load_after} (the CPU is shared: other processes inflate wall times)."
    )
    print(header)
    print("-" * len(header))
    for (name, mode), (wall, lo, hi, cpu, faults) in stats.items():
        achieved = flops[name] / wall / 1e9
        before, peak = rss.get((name, mode), (float("nan"), float("nan")))
        print(
            f"{name:34} {mode:5} {wall * 1e3:7.0f} {lo * 1e3:6.0f}-{hi * 1e3:<6.0f} "
            f"{cpu * 1e3:7.0f} {achieved:7.1f} {100 * achieved / peaks[mode]:5.1f}% "
            f"{peak:7.0f} {peak - before:7.0f} {faults:7.0f}"
        )
    print()

    def ratios(a: Summary, b: Summary) -> str:
        return f"median wall {a.wall / b.wall:.3f}, min wall {a.low / b.low:.3f}, CPU {a.cpu / b.cpu:.3f}"

    for mode in modes:
        for name in (OURS, OURS_DENSE):
            print(
                f"{mode:5} {name} / transformers time: "
                + ratios(stats[(name, mode)], stats[(HF, mode)])
            )
    if "fp32" in modes:
        a, b = stats[(OURS_DENSE, "fp32")], stats[(OURS_NO_WORKSPACE, "fp32")]
        print("fp32  forward_features with / without its workspace: " + ratios(a, b))
        a, b = stats[(OURS_DENSE, "fp32")], stats[(OURS_ADDMM, "fp32")]
        print("fp32  forward_features, oneDNN / addmm projections: " + ratios(a, b))
        for mode in (m for m in modes if m != "fp32"):
            for name in (OURS, OURS_DENSE, HF):
                speedup = stats[(name, "fp32")].wall / stats[(name, mode)].wall
                print(f"{mode} speed-up over fp32 (median wall), {name}: {speedup:.2f}x")
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (both models): {own_peak:.0f} MiB")


if __name__ == "__main__":
    main()

"""Speed of zeroseg's CLIP image encoder against transformers.CLIPVisionModel on this CPU.

ViT-B/16 (Radford et al., 2021) at 512x512 (a 32x32 patch grid, 1025 tokens: ZegCLIP's input size),
batch 1, random weights shared by both implementations, fp32 and bf16 autocast, 2 threads.
Reports ms/image (median of interleaved runs after warm-up), the analytic FLOPs of the encoder,
the achieved GFLOP/s against a measured matmul peak, and the peak RSS of each configuration
(measured in a fresh child process each).

    .venv/bin/python benchmarks/bench_clip_encoder.py [--reps 7] [--size 512]

FLOPs count a multiply-add as 2. Per block on N tokens of width C: q/k/v, output and MLP
projections 2N(3C^2 + C^2 + 8C^2) = 24NC^2; attention scores and weighted sum 4N^2C.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from zeroseg.models.backbones.clip import CLIP_PRESETS, CLIPVisionConfig, VisionTransformer  # noqa: E402
from zeroseg.models.pretrained import hf_to_zeroseg  # noqa: E402

THREADS = 2


def encoder_flops(cfg: CLIPVisionConfig, height: int, width: int, *, dense: bool) -> float:
    """FLOPs of one image through the encoder (dense: also project every patch token)."""
    c, p = cfg.width, cfg.patch_size
    patches = (height // p) * (width // p)
    n = patches + 1
    hidden = int(c * cfg.mlp_ratio)
    embed = 2 * patches * (3 * p * p) * c
    block = 2 * n * c * (3 * c + c) + 2 * 2 * n * c * hidden + 4 * n * n * c
    head = 2 * (n if dense else 1) * c * cfg.output_dim
    return embed + cfg.layers * block + head


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
    # hf_to_zeroseg is the loader's own remapping; CLIPVisionModel has no projection, so ours
    # keeps its random one.
    mapped = hf_to_zeroseg({f"vision_model.{k}": v for k, v in hf.state_dict().items()})
    state = {k.removeprefix("visual."): v for k, v in mapped.items()}
    state["proj"] = ours.proj.detach().clone()
    ours.load_state_dict(state, strict=True)
    return ours, hf


def runners(
    ours: VisionTransformer, hf: torch.nn.Module, images: torch.Tensor, bf16: bool
) -> dict[str, Callable[[], object]]:
    def wrap(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return fn()

        return run

    return {
        "zeroseg forward (image embedding)": wrap(lambda: ours(images)),
        "zeroseg forward_features (dense)": wrap(lambda: ours.forward_features(images)),
        "transformers CLIPVisionModel": wrap(
            lambda: hf(pixel_values=images, interpolate_pos_encoding=True)
        ),
    }


def time_interleaved(
    fns: dict[str, Callable[[], object]], *, reps: int, warmup: int
) -> dict[str, list[tuple[float, float]]]:
    """(wall, process CPU) seconds per call. Implementations alternate within each round, in
    reversed order every other round, so drifting load on this shared CPU falls on all alike;
    CPU time (all threads) is less sensitive than wall time to other processes' load."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            fns[name]()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 7) -> float:
    """Median GFLOP/s of an n x n x n matmul."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    runs = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        runs.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(runs) / 1e9


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_child(impl: str, precision: str, size: int) -> None:
    """In a fresh process: resident memory with the model built, and its peak during a forward.

    Writing 5 to /proc/self/clear_refs resets the kernel's peak-RSS mark (VmHWM), so the peak
    read afterwards belongs to the forward pass, not to building the model.
    """
    torch.set_num_threads(THREADS)
    ours, hf = build_models()
    if impl.startswith("zeroseg"):
        hf = None
    else:
        ours = None
    gc.collect()
    images = torch.randn(1, 3, size, size)
    fn = runners(ours, hf, images, precision == "bf16")[impl]  # type: ignore[arg-type]
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    print(f"{before:.1f} {_status_mib('VmHWM'):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="input side (multiple of 16)")
    parser.add_argument("--reps", type=int, default=7, help="timed runs per implementation")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--no-rss", action="store_true", help="skip the per-config RSS children")
    parser.add_argument(
        "--rss-child", nargs=2, metavar=("IMPL", "PRECISION"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1], args.size)
        return

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
    print(
        f"same weights check: max |cls(zeroseg) - pooler_output(transformers)| = {diff:.2e} (fp32)"
    )

    cfg = ours.config
    flops = {
        "zeroseg forward (image embedding)": encoder_flops(cfg, args.size, args.size, dense=False),
        "zeroseg forward_features (dense)": encoder_flops(cfg, args.size, args.size, dense=True),
        # CLIPVisionModel stops at the pooled class token (no projection).
        "transformers CLIPVisionModel": encoder_flops(cfg, args.size, args.size, dense=False)
        - 2 * cfg.width * cfg.output_dim,
    }
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(
        f"ViT-B/16 at {args.size}x{args.size}: {(args.size // 16) ** 2 + 1} tokens, "
        f"{flops['zeroseg forward (image embedding)'] / 1e9:.1f} GFLOP per image"
    )
    print(
        f"matmul peak (2048^3, {THREADS} threads): fp32 {peaks['fp32']:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16']:.0f} GFLOP/s"
    )

    results: dict[tuple[str, str], float] = {}
    spread: dict[tuple[str, str], tuple[float, float]] = {}
    for precision in ("fp32", "bf16"):
        times = time_interleaved(
            runners(ours, hf, images, precision == "bf16"), reps=args.reps, warmup=args.warmup
        )
        for name, runs in times.items():
            results[(name, precision)] = statistics.median(runs)
            spread[(name, precision)] = (min(runs), max(runs))

    rss: dict[tuple[str, str], tuple[float, float]] = {}
    if not args.no_rss:
        for name, precision in results:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--size",
                    str(args.size),
                    "--rss-child",
                    name,
                    precision,
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            rss[(name, precision)] = (float(out[-2]), float(out[-1]))

    header = (
        f"{'implementation':36} {'dtype':5} {'ms/img':>8} {'min-max ms':>15} "
        f"{'GFLOP/s':>8} {'% peak':>7} {'RSS MiB':>8} {'fwd +MiB':>8}"
    )
    print()
    print(header)
    print("-" * len(header))
    for (name, precision), seconds in results.items():
        lo, hi = spread[(name, precision)]
        achieved = flops[name] / seconds / 1e9
        before, peak = rss.get((name, precision), (float("nan"), float("nan")))
        print(
            f"{name:36} {precision:5} {seconds * 1e3:8.1f} {lo * 1e3:7.1f}-{hi * 1e3:<7.1f} "
            f"{achieved:8.1f} {100 * achieved / peaks[precision]:6.1f}% "
            f"{peak:8.0f} {peak - before:8.0f}"
        )
    print()
    hf_name = "transformers CLIPVisionModel"
    for precision in ("fp32", "bf16"):
        for name in ("zeroseg forward (image embedding)", "zeroseg forward_features (dense)"):
            ratio = results[(name, precision)] / results[(hf_name, precision)]
            print(f"{precision}: {name} / transformers time = {ratio:.3f}")
    for name in dict.fromkeys(n for n, _ in results):
        print(f"bf16 speed-up, {name}: {results[(name, 'fp32')] / results[(name, 'bf16')]:.2f}x")
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (both models): {own_peak:.0f} MiB")


if __name__ == "__main__":
    main()

"""Inference cost of ZegCLIP (Zhou et al., CVPR 2023) at the paper's scale on this CPU.

The VOC 15+5 preset (ViT-B/16 at 512x512, 10 deep prompt tokens in all 12 layers, decoder
3 layers / 8 heads / width 512), randomly initialised, batch 1, 2 threads. For fp32 and bf16
autocast: ms/image of the frozen encoder alone (``forward_features``, no prompts) and of the full
ZegCLIP forward (``scores``: prompted encoder, relationship descriptor, decoder, upsampling to
512 and sigmoid) with 20 and 171 classes; analytic FLOPs and achieved GFLOP/s against a measured
matmul peak; the peak resident memory added by each forward. Prints the ratio full/encoder for
20 classes (target <= 1.15) and the bf16 speed-up (target >= 2x). The encoder against
``transformers.CLIPVisionModel`` is ``bench_clip_encoder.py``'s job.

    .venv/bin/python benchmarks/bench_zegclip.py [--reps 5] [--warmup 1]

FLOPs (multiply-add = 2): the encoder as ``bench_clip_encoder.encoder_flops`` with the prompt
tokens added to the sequence; per decoder layer on K queries and N patches of width C:
q and output projections 4KC^2, k and v projections 4NC^2, scores and weighted sum 4KNC, MLP
16KC^2; plus the relationship-descriptor projection 2K(2D)C.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from bench_clip_encoder import _loadavg, _status_mib, encoder_flops, matmul_peak, time_interleaved  # noqa: E402

from zeroseg.config import load_config  # noqa: E402
from zeroseg.data.classes import ClassSplit  # noqa: E402
from zeroseg.runner import build_method  # noqa: E402

THREADS = 2
PRESET = "zegclip_vitb16_20k_voc-15+5"
SIZE = 512


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


def build(k: int):
    cfg = load_config(PRESET, ["model.pretrained=null"])  # random init: same compute
    split = ClassSplit(tuple(f"class {i}" for i in range(k)), unseen=tuple(range(k - 5, k)))
    torch.manual_seed(0)
    return build_method(cfg, split, 512).eval()


def peak_mib(fn) -> float:
    """Peak RSS growth (MiB) during one call (VmHWM reset through /proc/self/clear_refs)."""
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return _status_mib("VmHWM") - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed runs per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--modes", default="fp32,bf16")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {THREADS} threads, load average {_loadavg()}")
    peaks = {
        m: matmul_peak(torch.float32 if m == "fp32" else torch.bfloat16)
        for m in args.modes.split(",")
    }
    print("matmul peak (2048^3): " + ", ".join(f"{m} {p:.1f} GFLOP/s" for m, p in peaks.items()))
    m20 = build(20)
    m171 = build(171)
    m171.load_state_dict(m20.state_dict())  # same weights; only the vocabulary differs
    images = torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8)
    x = (images.float() - m20.mean) / m20.std
    text = {k: torch.nn.functional.normalize(torch.randn(k, 512), dim=-1) for k in (20, 171)}
    seen = {k: torch.arange(k) < k - 5 for k in (20, 171)}
    flops = {
        "encoder": encoder_flops(m20.encoder.config, SIZE, SIZE, projected=(SIZE // 16) ** 2 + 1),
        "zegclip K=20": zegclip_flops(m20, 20, SIZE),
        "zegclip K=171": zegclip_flops(m171, 171, SIZE),
    }
    results: dict[tuple[str, str], float] = {}
    print(
        f"{'mode':5} {'forward':14} {'ms/image':>9} {'GFLOP':>7} {'GFLOP/s':>8} {'% peak':>7} {'peak MiB':>9}"
    )
    for mode in args.modes.split(","):

        def wrap(fn, bf16=mode == "bf16"):
            def run():
                with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    return fn()

            return run

        fns = {
            "encoder": wrap(lambda: m20.encoder.forward_features(x)),
            "zegclip K=20": wrap(lambda: m20.scores(images, text[20], seen[20])),
            "zegclip K=171": wrap(lambda: m171.scores(images, text[171], seen[171])),
        }
        times = time_interleaved(fns, reps=args.reps, warmup=args.warmup)
        for name, fn in fns.items():
            wall = sorted(t[0] for t in times[name])[len(times[name]) // 2]
            results[(mode, name)] = wall
            mem = peak_mib(fn)
            gfs = flops[name] / wall / 1e9
            print(
                f"{mode:5} {name:14} {wall * 1000:9.1f} {flops[name] / 1e9:7.1f} {gfs:8.1f}"
                f" {100 * gfs / peaks[mode]:6.1f}% {mem:9.1f}"
            )
    for mode in args.modes.split(","):
        r = results[(mode, "zegclip K=20")] / results[(mode, "encoder")]
        r171 = results[(mode, "zegclip K=171")] / results[(mode, "encoder")]
        print(f"{mode}: full/encoder = {r:.3f} for 20 classes (target <= 1.15), {r171:.3f} for 171")
    if ("fp32", "zegclip K=20") in results and ("bf16", "zegclip K=20") in results:
        for name in ("encoder", "zegclip K=20", "zegclip K=171"):
            s = results[("fp32", name)] / results[("bf16", name)]
            print(f"bf16 speed-up, {name}: {s:.2f}x (target >= 2x)")
    print(f"load average at the end {_loadavg()}")


if __name__ == "__main__":
    main()

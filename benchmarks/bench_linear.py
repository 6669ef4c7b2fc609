"""fp32 time of each ViT-B/16 block projection: ``addmm`` (torch's BLAS) against oneDNN.

The four projections of a CLIP ViT-B/16 block on ZegCLIP's 1035 tokens (1025 at 512 px plus 10
deep prompts): q/k/v (768 -> 2304), attention output (768 -> 768), MLP in (768 -> 3072) and MLP
out (3072 -> 768), random weights, 2 threads. ``addmm`` writes into a kept buffer (as the
encoder's workspace did until session 37), ``onednn`` is torch's ``mkldnn::_linear_pointwise``
(what ``zeroseg.models.backbones.clip.Workspace.linear`` runs since). Calls alternate within
each round (``bench_clip_encoder.time_interleaved``); medians. Also the largest difference
between the two outputs (fp32 rounding: the kernels sum in different orders).

    .venv/bin/python benchmarks/bench_linear.py [--reps 21] [--tokens 1035]

Run it under an environment variable such as ``MKL_ENABLE_INSTRUCTIONS=AVX512`` to see whether
it moves ``addmm``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from bench_clip_encoder import summarise, time_interleaved  # noqa: E402

from zeroseg.models.backbones.clip import Workspace  # noqa: E402

SHAPES = {"q/k/v": (768, 2304), "attention out": (768, 768), "MLP in": (768, 3072)}
SHAPES["MLP out"] = (3072, 768)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=21, help="timed calls per kernel and shape")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--tokens", type=int, default=1035, help="rows of the input")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    onednn = Workspace._onednn
    if onednn is None:
        parser.error("this torch has no oneDNN linear kernel (mkldnn::_linear_pointwise)")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    total = {"addmm": 0.0, "onednn": 0.0}
    print(f"{args.tokens} tokens, {args.threads} threads, medians of {args.reps} interleaved calls")
    print(
        f"{'projection':14} {'addmm ms':>9} {'oneDNN ms':>10} {'oneDNN/addmm':>13} {'max |diff|':>11}"
    )
    with torch.inference_mode():
        for name, (c_in, c_out) in SHAPES.items():
            x = torch.randn(args.tokens, c_in, generator=g)
            w = torch.randn(c_out, c_in, generator=g) * c_in**-0.5
            b = torch.randn(c_out, generator=g) * 0.02
            out = torch.empty(args.tokens, c_out)
            fns = {
                "addmm": lambda x=x, w=w, b=b, out=out: torch.addmm(b, x, w.t(), out=out),
                "onednn": lambda x=x, w=w, b=b: onednn(x, w, b, "none", [], ""),
            }
            times = time_interleaved(fns, reps=args.reps, warmup=args.warmup)
            ms = {k: summarise(v).wall * 1e3 for k, v in times.items()}
            for k in total:
                total[k] += ms[k]
            diff = (fns["onednn"]() - fns["addmm"]()).abs().max().item()
            print(
                f"{name:14} {ms['addmm']:9.2f} {ms['onednn']:10.2f} "
                f"{ms['onednn'] / ms['addmm']:13.3f} {diff:11.1e}"
            )
    print(
        f"{'a whole block':14} {total['addmm']:9.2f} {total['onednn']:10.2f} "
        f"{total['onednn'] / total['addmm']:13.3f}"
    )


if __name__ == "__main__":
    main()

"""How many classes ZegCLIP's labels path upsamples on a trained model's real images.

``ZegCLIP.labels`` (what ``Predictor.predict`` returns) upsamples only the classes that can be
the argmax somewhere in the image (``zeroseg.models.heads.mask_scores.sigmoid_labels``); the
benchmark at the paper's scale (``bench_zegclip.py``) runs random weights, whose masks say
nothing about how many classes compete. This takes a trained ZegCLIP run (e.g. the demo's) and,
image by image on a split, reports how many of the K classes were upsampled, checks the labels
against the argmax of the full scores, and times both paths (process CPU time, one thread).

    .venv/bin/python benchmarks/zegclip_candidates.py runs/demo/runs/zegclip-<hash> [--split val] [--images 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zeroseg import runner
from zeroseg.data.loader import iterate_eval
from zeroseg.models.heads.mask_scores import candidate_classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a trained ZegCLIP run directory or its model.safetensors")
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--images", type=int, default=100, help="how many images of the split")
    args = parser.parse_args()
    torch.set_num_threads(1)
    method, cfg, split, _ = runner.load_model(args.run)
    if cfg.method not in ("zegclip", "zegclip-st"):
        parser.error(f"{args.run} holds a {cfg.method!r} model, not ZegCLIP")
    method.eval()
    data = runner.build_data(cfg)
    emb = runner.Embedder(cfg.text, world=data.world)(list(split.names))
    seen = torch.tensor([k in split.seen for k in range(split.num_classes)])
    counts, t_scores, t_labels, n = [], [], [], 0
    with torch.no_grad():
        for batch in iterate_eval(data.eval_split(args.split), 1):
            if n >= args.images:
                break
            image = batch["image"]
            logits = method.predict_logits(image, emb)[0].float()
            counts.append(len(candidate_classes(logits, method.seen_shift(seen))))
            start = time.process_time()
            expected = method.scores(image, emb, seen).argmax(1)
            t_scores.append(time.process_time() - start)
            start = time.process_time()
            labels = method.labels(image, emb, seen)
            t_labels.append(time.process_time() - start)
            if not torch.equal(labels, expected):
                raise SystemExit(f"image {n}: labels differ from the argmax of the scores")
            n += 1
    k = split.num_classes
    print(
        f"{n} {args.split} images of {tuple(image.shape[-2:])} px, K = {k} classes: upsampled "
        f"per image median {statistics.median(counts)}, mean {statistics.mean(counts):.1f}, "
        f"max {max(counts)} ({100 * statistics.mean(counts) / k:.0f}% of K on average); "
        f"labels equal the argmax of the scores on every image"
    )
    print(
        f"CPU ms per image (1 thread, medians): scores + argmax "
        f"{1e3 * statistics.median(t_scores):.2f}, labels {1e3 * statistics.median(t_labels):.2f}"
    )


if __name__ == "__main__":
    main()

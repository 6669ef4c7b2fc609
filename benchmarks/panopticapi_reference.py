"""panopticapi's own ``pq_compute`` on the COCO crowd fixture of tests/data/test_coco_crowd.py.

The test states its PQ figures (derived with panopticapi's rules); this script is the command that
checks them against the reference implementation itself, which is not on PyPI and so is not a
dev dependency: point ``--panopticapi`` at a checkout of cocodataset/panopticapi (the directory
that holds the ``panopticapi`` package). The fixture (ground truth with a crowd of persons, the
predicted segments) is imported from the test module, so both use the very same data.

Usage (from the repository root, with the project's environment):

    python benchmarks/panopticapi_reference.py --panopticapi /path/to/panopticapi

Prints panopticapi's PQ / SQ / RQ (percent) per category with a nonzero figure, and overall
(``n``: the categories that occur).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def _fixture():
    """The test module (its ground truth and predictions)."""
    spec = importlib.util.spec_from_file_location(
        "test_coco_crowd", ROOT / "tests" / "data" / "test_coco_crowd.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_pq(panopticapi_dir: Path) -> dict:
    """panopticapi's ``pq_compute`` result on the fixture (fractions, as it returns them)."""
    sys.path.insert(0, str(panopticapi_dir))
    from panopticapi.evaluation import pq_compute

    from zeroseg.data.real import coco_panoptic
    from zeroseg.data.real.fixtures import panoptic_categories

    fx = _fixture()
    pred, rows = fx.predictions()
    classes = [cid for cid, _ in coco_panoptic.CATEGORIES]
    with tempfile.TemporaryDirectory(prefix="panopticapi-") as tmp:
        tmp = Path(tmp)
        image = {"id": 7, "file_name": "000000000007.jpg", "height": 10, "width": 10}
        for name, ids, segments in (
            ("gt", fx.gt_ids(), fx.GT_SEGMENTS),
            (
                "pred",
                pred,
                [{"id": int(i), "category_id": classes[int(k)]} for i, k in rows],
            ),
        ):
            (tmp / name).mkdir()
            Image.fromarray(coco_panoptic.id_to_rgb(ids), "RGB").save(tmp / name / "7.png")
            ann = {"image_id": 7, "file_name": "7.png", "segments_info": segments}
            data = {"images": [image], "annotations": [ann], "categories": panoptic_categories()}
            (tmp / f"{name}.json").write_text(json.dumps(data))
        with contextlib.redirect_stdout(io.StringIO()):  # its own table and timing lines
            return pq_compute(
                str(tmp / "gt.json"), str(tmp / "pred.json"), str(tmp / "gt"), str(tmp / "pred")
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panopticapi", type=Path, required=True, help="panopticapi checkout")
    args = parser.parse_args(argv)
    if not (args.panopticapi / "panopticapi" / "evaluation.py").is_file():
        raise SystemExit(
            f"--panopticapi {args.panopticapi}: no panopticapi/evaluation.py there; expected a "
            "checkout of cocodataset/panopticapi"
        )
    from zeroseg.data.real import coco_panoptic

    names = dict(coco_panoptic.CATEGORIES)
    res = reference_pq(args.panopticapi)
    for cid, r in sorted(res["per_class"].items()):
        if r["pq"] or r["sq"] or r["rq"]:
            print(
                f"{names[cid]:14s} PQ {100 * r['pq']:.6f}  SQ {100 * r['sq']:.6f}  "
                f"RQ {100 * r['rq']:.6f}"
            )
    for group in ("All", "Things", "Stuff"):
        r = res[group]
        print(
            f"{group:14s} PQ {100 * r['pq']:.6f}  SQ {100 * r['sq']:.6f}  "
            f"RQ {100 * r['rq']:.6f}  n {r['n']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

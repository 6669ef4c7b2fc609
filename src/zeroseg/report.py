"""``report.md`` and ``report.json``: every number comes from the run that writes them."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from zeroseg import __version__

PROTOCOL_NOTE = {
    "inductive": "inductive: no unseen pixel, no unseen image used in training",
    "transductive": "transductive: also uses the unlabelled training images (never unseen labels)",
    "supervised": "supervised upper bound: trained with every class labelled (not zero-shot)",
}


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _fmt(v, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def write_report(out: Path, summary: dict) -> tuple[Path, Path]:
    """Writes ``report.json`` (the data) and ``report.md`` (tables) under ``out``.

    ``summary`` holds ``world``, ``split`` (names, seen, unseen), ``methods`` (name -> row with
    metric keys in percent, ``protocol``, times, ``per_class_iou``, notes) and ``figures``.
    """
    summary = {
        "zeroseg_version": __version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        **summary,
    }
    write_text_atomic(
        out / "report.json", json.dumps(summary, indent=2, sort_keys=False, default=float)
    )
    rows = summary["methods"]
    oracle = rows.get("oracle", {}).get("miou")
    lines = [
        f"# zeroseg report: {summary.get('title', 'ShapeWorld')}",
        "",
        f"World `{summary.get('world', '?')}`: {summary['split']['num_classes']} classes, "
        f"{len(summary['split']['unseen'])} unseen ({', '.join(summary['split']['unseen'])}). "
        f"{summary.get('train_images', '?')} training and {summary.get('val_images', '?')} validation images.",
        "Metrics in percent on the validation split, over all classes (generalized zero-shot).",
        "hIoU = 2·S·U/(S+U); 'hIoU/oracle' is hIoU as a fraction of the oracle's mIoU.",
        "'train (s)': training wall time in this run; 'reused': every stage was loaded from an"
        " earlier run in the same output directory.",
        "",
    ]
    has_pq = any(r.get("hpq") is not None for r in rows.values())
    has_bf = any(r.get("boundary_f") is not None for r in rows.values())
    head = "| method | protocol | mIoU(S) | mIoU(U) | hIoU | mIoU | hIoU/oracle |"
    sep = "|---|---|---:|---:|---:|---:|---:|"
    if has_pq:
        head += " PQ(S) | PQ(U) | hPQ | AP50(S) | AP50(U) |"
        sep += "---:|---:|---:|---:|---:|"
    if has_bf:
        head += " boundary F |"
        sep += "---:|"
    head += " train (s) | infer (ms/img) |"
    sep += "---:|---:|"
    lines += [head, sep]
    for name, r in rows.items():
        frac = r["hiou"] / oracle if oracle and r["hiou"] is not None else None
        line = (
            f"| {name} | {r['protocol']} | {_fmt(r['seen_miou'])} | {_fmt(r['unseen_miou'])} | "
            f"**{_fmt(r['hiou'])}** | {_fmt(r['miou'])} | {_fmt(frac, 2)} |"
        )
        if has_pq:
            line += "".join(
                f" {_fmt(r.get(k))} |"
                for k in ("seen_pq", "unseen_pq", "hpq", "seen_ap50", "unseen_ap50")
            )
        if has_bf:
            line += f" {_fmt(r.get('boundary_f'))} |"
        took = "reused" if r.get("reused") else _fmt(r.get("train_seconds"), 0)
        line += f" {took} | {_fmt(r.get('infer_ms_per_image'), 2)} |"
        lines.append(line)
    lines += ["", "Protocols:"]
    for note in dict.fromkeys(
        PROTOCOL_NOTE.get(r["protocol"], r["protocol"]) for r in rows.values()
    ):
        lines.append(f"- {note}")
    notes = [(n, note) for n, r in rows.items() for note in r.get("notes", [])]
    if notes:
        lines += ["", "Notes:"] + [f"- {n}: {note}" for n, note in notes]
    figs = summary.get("figures", {})
    if figs:
        lines += [""] + [f"![{k}]({v})" for k, v in figs.items()]
    unseen = summary["split"]["unseen"]
    lines += [
        "",
        "## Unseen-class IoU",
        "",
        "| class | " + " | ".join(rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    for c in unseen:
        lines.append(
            f"| {c} | " + " | ".join(_fmt(r["per_class_iou"].get(c)) for r in rows.values()) + " |"
        )
    lines += [
        "",
        "## Seen-class IoU",
        "",
        "| class | " + " | ".join(rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    for c in summary["split"]["seen"]:
        lines.append(
            f"| {c} | " + " | ".join(_fmt(r["per_class_iou"].get(c)) for r in rows.values()) + " |"
        )
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md", out / "report.json"


def write_seed_report(out: Path, summary: dict) -> tuple[Path, Path]:
    """Writes ``seeds.json`` and ``seeds.md``: mean ± std (min-max) of each method over seeds."""
    write_text_atomic(out / "seeds.json", json.dumps(summary, indent=2, default=float))
    seeds = summary["seeds"]
    lines = [
        f"# zeroseg seed spread: {summary.get('title', 'ShapeWorld')}",
        "",
        f"Seeds {', '.join(map(str, seeds))}; each seed's full report is in `seed-<s>/report.md`.",
        "Percent; mean ± sample standard deviation, (min - max) over the seeds.",
        "",
        "| method | protocol | mIoU(S) | mIoU(U) | hIoU |",
        "|---|---|---:|---:|---:|",
    ]

    def cell(m: dict) -> str:
        return f"{m['mean']:.1f} ± {m['std']:.1f} ({m['min']:.1f} - {m['max']:.1f})"

    for name, row in summary["methods"].items():
        lines.append(
            f"| {name} | {row.get('protocol') or '-'} | {cell(row['seen_miou'])} | "
            f"{cell(row['unseen_miou'])} | {cell(row['hiou'])} |"
        )
    write_text_atomic(out / "seeds.md", "\n".join(lines) + "\n")
    return out / "seeds.md", out / "seeds.json"

"""``report.md`` and ``report.json``: every number comes from the run that writes them."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from zeroseg import __version__
from zeroseg.metrics.bootstrap import BOOTSTRAP_REPS

PROTOCOL_NOTE = {
    "inductive": "inductive: no unseen pixel, no unseen image used in training",
    "transductive": "transductive: also uses the unlabelled training images (never unseen labels)",
    "supervised": "supervised upper bound: trained with every class labelled (not zero-shot)",
}
WORD_NOTE = {
    "unseen names": "unseen names (stage k): unseen class names (text embeddings, never pixels)"
    " used in training stage k; without it, unseen names are used at test time only",
    "CLIP-like encoder": "CLIP-like encoder: starts from a pretrained image-text encoder whose"
    " captions name unseen classes",
    "unlabelled images": "unlabelled images: also trains on the unlabelled training images"
    " (transductive; never their labels, nor where unseen pixels are)",
}


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _fmt(v, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def protocol_label(row: dict) -> str:
    """The table's short form of a row's ``protocol_detail`` (words of docs/methods.md)."""
    detail = row.get("protocol_detail")
    if not detail:
        return row.get("protocol", "?")
    parts = [detail["category"]]
    if detail.get("unseen_names"):
        parts.append("unseen names (stage " + ", ".join(detail["unseen_names"]) + ")")
    if detail.get("clip_like"):
        parts.append("CLIP-like encoder")
    if detail.get("unlabelled_images"):
        parts.append("unlabelled images")
    return "; ".join(parts)


COMPARED = (
    ("seen_miou", "mIoU(S)"),
    ("unseen_miou", "mIoU(U)"),
    ("hiou", "hIoU"),
    ("ausuc", "AUSUC"),
)


def _like_for_like(intro: str, rows: list[tuple[str, str, list[str]]]) -> list[str]:
    """The "Like for like" section: ``intro`` and a row per (method, baseline, cells)."""
    if not rows:
        return []
    lines = ["", "## Like for like", "", intro, ""]
    lines.append("| method | vs | " + " | ".join(f"Δ {label}" for _, label in COMPARED) + " |")
    lines.append("|---|---|" + "---:|" * len(COMPARED))
    return lines + [f"| {n} | {b} | " + " | ".join(cells) + " |" for n, b, cells in rows]


def comparison_lines(rows: dict) -> list[str]:
    """The "Like for like" table of a one-seed report: each row against its baselines
    (``row["baselines"]``, from its preset's ``demo.baselines``), as differences of the metrics.
    One seed has no spread, so no gap is marked; ``--seeds`` marks those that exceed it."""

    def cells(row: dict, ref: dict, over_images: dict) -> list[str]:
        out = []
        for k, _ in COMPARED:
            if row.get(k) is None or ref.get(k) is None:
                out.append("–")
                continue
            cell = f"{row[k] - ref[k]:+.1f}"
            if k in over_images:
                cell += f" {image_interval(over_images[k])}"
            out.append(cell)
        return out

    return _like_for_like(
        "Each method minus the row it is compared with (same backbone, training images and "
        "budget; ablation rows against their full method; `+refinement` rows against the "
        "unrefined method). One seed: these differences have no spread yet; "
        "`zeroseg demo --seeds` marks the ones that exceed it. In brackets: "
        f"{IMAGE_INTERVAL_NOTE}",
        [
            (n, b, cells(r, rows[b], r.get("over_images", {}).get(b, {})))
            for n, r in rows.items()
            for b in r.get("baselines", [])
        ],
    )


# what a report's "[low, high]" after a difference is
IMAGE_INTERVAL_NOTE = (
    f"the 95% interval of the difference over {BOOTSTRAP_REPS} resamples of the scored images "
    "(drawn with "
    "replacement, the same images for both rows and every seed; "
    "`zeroseg.metrics.bootstrap`): how much another sample of images could move it, which the "
    "seed spread does not measure."
)


def image_interval(interval: dict) -> str:
    """``[-0.3, +2.6]``: a gap's interval over resampled images."""
    return f"[{interval['low']:+.1f}, {interval['high']:+.1f}]"


def seed_comparison_lines(rows: dict, gap_rule: str) -> list[str]:
    """The "Like for like" table of a seed report: each row against each of its baselines
    (``row["comparisons"]``), the difference of means, **bold** where it exceeds the spread."""

    def cell(g: dict | None) -> str:
        if g is None:
            return "–"
        seeds = ""
        if g.get("by_seed"):
            seeds = "; by seed " + ", ".join(f"{d:+.1f}" for d in g["by_seed"].values())
        if g.get("over_images"):
            seeds += f"; over images {image_interval(g['over_images'])}"
        if g["exceeds_spread"]:
            return f"**{g['value']:+.1f}** (± {g['spread']:.1f}{seeds})"
        return f"{g['value']:+.1f} (± {g['spread']:.1f}, no difference{seeds})"

    return _like_for_like(
        f"Difference of means, method minus the row it is compared with; **bold** where it "
        f"exceeds the spread ({gap_rule}), 'no difference' where it does not. 'by seed': the "
        f"same difference seed by seed (descriptive; the rule decides what counts). 'over "
        f"images': {IMAGE_INTERVAL_NOTE}",
        [
            (n, b, [cell(gaps.get(k)) for k, _ in COMPARED])
            for n, r in rows.items()
            for b, gaps in r.get("comparisons", {}).items()
        ],
    )


BF16_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f")  # oneDNN's bf16 kernels differ by these
# With one of these the CPU multiplies bf16 natively; without, oneDNN emulates bf16 (measured in
# session 20 on an Ice Lake-class Xeon with AVX-512 but neither: a 2048^3 matmul at 53 GFLOP/s in
# bf16 against 181 in fp32, a ShapeWorld training step 2x slower under bf16 autocast).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_info(cpuinfo: str | None = None) -> dict:
    """The CPU model and its bf16-relevant ISA flags (training figures depend on them).

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (read when None; empty where it does not exist).

    Returns:
        ``{"model": str, "bf16_isa": [flag, ...]}``: the first ``model name`` (else
        ``platform.processor()``) and which of :data:`BF16_FLAGS` the first ``flags`` line has.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "bf16_isa": [f for f in BF16_FLAGS if f in flags],
    }


def native_bf16_cpu(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (:data:`NATIVE_BF16_FLAGS`; see :func:`cpu_info`)."""
    return any(f in NATIVE_BF16_FLAGS for f in cpu_info(cpuinfo)["bf16_isa"])


def _machine() -> dict:
    return {
        "zeroseg_version": __version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "cpu": cpu_info(),
        # what ``train.amp: auto`` (the ShapeWorld presets) trained in on this CPU
        "amp_auto": "bf16" if native_bf16_cpu() else "none",
    }


def _stages_from_sentence(summary: dict) -> str:
    """The reports' word on ``zeroseg demo --stages-from`` (empty without it)."""
    if not summary.get("stages_from"):
        return ""
    return (
        f" Finished stages copied from `{summary['stages_from']}` (`--stages-from`), not"
        " trained; each row's notes name them."
    )


def write_report(out: Path, summary: dict) -> tuple[Path, Path]:
    """Writes ``report.json`` (the data) and ``report.md`` (tables) under ``out``.

    ``summary`` holds ``world``, ``split`` (names, seen, unseen), ``methods`` (name -> row with
    metric keys in percent, ``protocol``, times, ``per_class_iou``, notes) and ``figures``.
    """
    summary = {**_machine(), **summary}
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
        f"{summary.get('train_images', '?')} training, {summary.get('val_images', '?')} validation "
        f"and {summary.get('test_images', '?')} test images.",
        f"Metrics in percent on the `{summary.get('eval_split', 'val')}` split, over all classes"
        " (generalized zero-shot); every choice, the calibration gamma included, was made on "
        f"`{summary.get('tuned_on', 'val')}`.",
        "hIoU = 2·S·U/(S+U); 'hIoU/oracle' is hIoU as a fraction of the oracle's mIoU.",
        "gamma: the shared calibration rule's value (calibrated stacking, chosen on val by the"
        " highest hIoU); AUSUC: area under mIoU(S) against mIoU(U) over gamma, calibration-free"
        " (docs/methods.md, 'Calibration').",
        "'train (s)': training wall time in this run; 'reused': every stage was loaded from an"
        " earlier run in the same output directory." + _stages_from_sentence(summary),
        f"Machine: {summary['cpu']['model']} ({', '.join(summary['cpu']['bf16_isa']) or 'no bf16 ISA'}"
        f"), {summary['machine']}, torch {summary['torch']}, {summary.get('threads', '?')} threads,"
        f" amp auto = {summary.get('amp_auto', '?')}: training figures repeat on one CPU type at"
        " one thread count, not across CPU types.",
    ]
    found = summary.get("foundation")
    if found:
        lines.append(
            f"Rows marked in their notes start from the ShapeWorld foundation `{found['name']}` "
            f"(sha256 `{found['sha256'][:16]}`): pretrained on image-level captions only, which "
            + (
                f"never name {len(found['excluded'])} of the classes."
                if found.get("excluded")
                else "may name this world's unseen classes (as CLIP's captions name VOC's)."
            )
        )
    lines.append("")
    has_pq = any(r.get("hpq") is not None for r in rows.values())
    has_bf = any(r.get("boundary_f") is not None for r in rows.values())
    head = "| method | protocol | mIoU(S) | mIoU(U) | hIoU | mIoU | hIoU/oracle | AUSUC | gamma |"
    sep = "|---|---|---:|---:|---:|---:|---:|---:|---:|"
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
        gamma = (r.get("calibration") or {}).get("gamma")
        line = (
            f"| {name} | {protocol_label(r)} | {_fmt(r['seen_miou'])} | {_fmt(r['unseen_miou'])} | "
            f"**{_fmt(r['hiou'])}** | {_fmt(r['miou'])} | {_fmt(frac, 2)} | "
            f"{_fmt(r.get('ausuc'))} | {_fmt(gamma, 2)} |"
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
    lines += comparison_lines(rows)
    lines += ["", "Protocols:"]
    for note in dict.fromkeys(
        PROTOCOL_NOTE.get(r["protocol"], r["protocol"]) for r in rows.values()
    ):
        lines.append(f"- {note}")
    labels = " ".join(protocol_label(r) for r in rows.values())
    lines += [f"- {note}" for word, note in WORD_NOTE.items() if word in labels]
    notes = [(n, note) for n, r in rows.items() for note in r.get("notes", [])]
    if notes:
        lines += ["", "Notes:"] + [f"- {n}: {note}" for n, note in notes]
    figs = summary.get("figures", {})
    if figs:
        lines += [""] + [f"![{k}]({v})" for k, v in figs.items()]
    for title, key in (("Unseen", "unseen"), ("Seen", "seen")):
        lines += ["", f"## {title}-class IoU", "", "| class | " + " | ".join(rows) + " |"]
        lines.append("|---|" + "---:|" * len(rows))
        for c in summary["split"][key]:
            ious = (_fmt(r["per_class_iou"].get(c)) for r in rows.values())
            lines.append(f"| {c} | " + " | ".join(ious) + " |")
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


def headroom_sentence(rows: dict) -> str:
    """How much a world leaves the zero-shot methods: the oracle's mean hIoU (trained on every
    label, the unseen classes' too) and, as a share of it, that of each row compared with no other
    in this run (the baselines, when their methods ran); "" when the run has no oracle row. On an
    easy world the baselines sit near the oracle, and the gaps issue 19 asks of the methods are
    small against the seed spread."""
    oracle = rows.get("oracle", {})
    if "hiou" not in oracle or oracle["hiou"] <= 0:
        return ""
    bases = [
        f"{name} {row['hiou'] / oracle['hiou']:.2f}"
        for name, row in rows.items()
        if name != "oracle" and "baseline" not in row and "hiou" in row
    ]
    text = (
        f"Headroom: the oracle (every training label, the unseen classes' too) reaches "
        f"{oracle['hiou']:.1f} ± {oracle['hiou_std']:.1f} hIoU"
    )
    if bases:
        text += "; the rows with no baseline in this run reach, as a share of it, " + ", ".join(
            bases
        )
    return text + " (means over seeds)."


def write_seed_summary(out: Path, summary: dict) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` of a seed run (``zeroseg demo --seeds``).

    Rows hold each metric's mean over seeds as ``<metric>`` and its sample standard deviation as
    ``<metric>_std``; a method's gap to its baseline is marked in the table only where it
    exceeds the spread (``summary["gap_rule"]``), and shown as "within spread" otherwise.
    """
    summary = {**_machine(), **summary}
    write_text_atomic(out / "report.json", json.dumps(summary, indent=2, default=float))
    seeds = summary["seeds"]
    lines = [
        f"# zeroseg report: {summary.get('title', 'ShapeWorld')}",
        "",
        f"Seeds {', '.join(map(str, seeds))} (each seed's report: `seed-<s>/report.md`). "
        f"Percent on `{summary['eval_split']}`, every choice made on `{summary['tuned_on']}`; "
        "mean ± sample standard deviation over the seeds." + _stages_from_sentence(summary),
        f"Gap to the baseline (in brackets): marked **bold** only where it exceeds the spread "
        f"({summary['gap_rule']}); 'within spread' otherwise.",
        *filter(None, [headroom_sentence(summary["methods"])]),
        "",
        "| method | protocol | baseline | mIoU(S) | mIoU(U) | hIoU | AUSUC | gamma by seed |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]

    def cell(row: dict, m: str) -> str:
        if m not in row:
            return "–"
        text = f"{row[m]:.1f} ± {row[f'{m}_std']:.1f}"
        gap = row.get("gap", {}).get(m)
        if gap is not None:
            text += (
                f" (**{gap['value']:+.1f}**)"
                if gap["exceeds_spread"]
                else f" ({gap['value']:+.1f}, within spread)"
            )
        return text

    for name, row in summary["methods"].items():
        gammas = row.get("calibration", {}).get("gamma_by_seed", {})
        lines.append(
            f"| {name} | {protocol_label(row)} | {row.get('baseline', '–')} | "
            + " | ".join(cell(row, m) for m in ("seen_miou", "unseen_miou", "hiou", "ausuc"))
            + " | "
            + ", ".join("–" if g is None else f"{g:+.2f}" for g in gammas.values())
            + " |"
        )
    lines += seed_comparison_lines(summary["methods"], summary["gap_rule"])
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md", out / "report.json"

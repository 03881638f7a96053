"""Output of an audit: the audit.md summary and writing audit.json + audit.md."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from toolkit.io import atomic_write_json, atomic_write_text

_SHOW = 50  # pairs listed per table in audit.md (audit.json has all of them)


def _table(rows: list[list], header: list[str]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def _short(path: str, root: str | None) -> str:
    if root:
        try:
            return os.path.relpath(path, root)
        except ValueError:
            pass
    return path


def _dash(value) -> str:
    return "-" if value is None else str(value)


def audit_markdown(report: Mapping) -> str:
    """A readable summary of an audit report."""
    lines = _verdict_markdown(report)
    lines += _balance_markdown(report)
    lines += _images_markdown(report)
    lines += _confound_markdown(report)
    lines += _pairs_markdown(report)
    lines += _fix_markdown(report)
    return "\n".join(lines) + "\n"


def _verdict_markdown(report: Mapping) -> list[str]:
    """The title, the verdict with the leakage per split pair, and the rules the audit applied."""
    root = report.get("image_root")
    leak = report["leakage"]
    lines = [f"# Data audit: {report.get('name') or report.get('datalist')}", ""]
    lines.append(
        f"Datalist: `{report.get('datalist')}`, {report['num_items']} items under "
        f"`{root}` (paths below are relative to it), "
        f"{len(report['unreadable'])} unreadable, audited in {report['elapsed_seconds']} s."
    )
    verdict = "**LEAKAGE FOUND**" if leak["found"] else "No leakage found"
    lines += ["", f"## Verdict: {verdict}", ""]
    counts = leak["counts_by_split_pair"]
    if counts:
        rows = [
            [
                pair.replace("|", " / "),
                c.get("shared_patients", 0),
                c.get("exact_duplicate_pairs", 0),
                c.get("near_duplicate_pairs", 0),
            ]
            for pair, c in counts.items()
        ]
        lines += _table(
            rows, ["split pair", "shared patients", "exact duplicate pairs", "near-duplicate pairs"]
        )
        lines.append("")
    copies = leak.get("images_with_a_copy_in_another_split", {})
    if copies:
        lines.append(
            "Images with an exact or near copy in another split: "
            + ", ".join(f"{s} {n} of {report['splits'].get(s, '?')}" for s, n in copies.items())
            + "."
        )
        lines.append("")
    s = report["settings"]
    lines.append(
        f"Near-duplicates: 64-bit pHash Hamming distance <= {s['hamming_threshold']}"
        f"{' (also against the 8 rotations / flips)' if s['rotations_and_flips'] else ''}"
        + (
            f", confirmed by 256-bit pHash distance <= {s['confirm_hamming_256']}"
            if s["confirm_hamming_256"] is not None
            else ""
        )
        + (
            f" and on the pixels: {s['pixel_difference']} <= {s['confirm_pixel_difference']}"
            if s.get("confirm_pixel_difference") is not None
            else ""
        )
        + "."
    )
    stage = s.get("embedding_stage")
    if stage:
        lines.append(
            f"Embedding stage ({stage['embedder']}, k = {stage['neighbours']}, similarity >= "
            f"{stage['min_similarity']}, keypoint inliers >= {stage['min_inliers']}): "
            f"{stage.get('candidates', 0)} candidate pairs, {stage.get('confirmed', 0)} confirmed."
        )
    found = report.get("confounds", {})
    if found.get("flags"):
        lines += [
            "",
            "**CONFOUND FOUND**: an image property predicts the label (details under Confounds):",
            "",
        ]
        lines += [f"- {flag['text']}" for flag in found["flags"]]
    if s.get("volumes_checked_for_exact_duplicates_only"):
        lines.append(
            f"{s['volumes_checked_for_exact_duplicates_only']} volumes were checked for exact duplicates "
            "only (perceptual hashes of volumes matched different patients)."
        )

    return lines


def _balance_markdown(report: Mapping) -> list[str]:
    lines = []
    lines += ["", "## Class balance", ""]
    splits = list(report["splits"])
    rows = [[name, *(report["class_balance"][sp].get(name, 0) for sp in splits)] for name in report["labels"]]
    rows.append(["**total**", *(report["splits"][sp] for sp in splits)])
    lines += _table(rows, ["class", *splits])

    return lines


def _images_markdown(report: Mapping) -> list[str]:
    lines = []
    lines += ["", "## Images", ""]
    for key, title in (
        ("format", "format"),
        ("modality", "modality"),
        ("manufacturer", "manufacturer (DICOM)"),
        ("photometric", "colour mode (DICOM photometric interpretation / Pillow mode)"),
        ("content", "colour content (grey: the colour channels agree)"),
        ("bit_depth", "bit depth"),
        ("channels", "channels as stored (RGBA = 4)"),
        ("size", "size (W x H, width first; volumes: voxel shape)"),
    ):
        values = report["image_stats"].get(key, {})
        if key == "manufacturer" and not values:
            continue
        shown = ", ".join(f"{k}: {v}" for k, v in list(values.items())[:12])
        more = f" (+{len(values) - 12} more)" if len(values) > 12 else ""
        lines.append(f"- {title}: {shown or '-'}{more}")
    return lines


def _pairs_markdown(report: Mapping) -> list[str]:
    """Unreadable files, duplicates inside one split, and what leaks across splits (first rows of each)."""
    root = report.get("image_root")
    leak = report["leakage"]
    lines = _unreadable_markdown(report["unreadable"], root)
    lines += _within_split_markdown(report.get("within_split", {}))
    lines += _shared_patients_markdown(leak["shared_patients"])
    lines += _exact_duplicates_markdown(leak["exact_duplicates"], root)
    lines += _near_duplicates_markdown(leak["near_duplicates"], root)
    listed = max(len(leak["exact_duplicates"]), len(leak["near_duplicates"]), len(leak["shared_patients"]))
    if listed > _SHOW:
        lines += ["", f"(first {_SHOW} rows per table; audit.json lists all)"]
    return lines


def _unreadable_markdown(unreadable: list[Mapping], root: str | None) -> list[str]:
    if not unreadable:
        return []
    lines = ["", "## Unreadable files", ""]
    lines += _table(
        [[_short(u["image"], root), u["split"], u["error"]] for u in unreadable[:_SHOW]],
        ["file", "split", "error"],
    )
    return lines


def _within_split_markdown(within: Mapping) -> list[str]:
    if not within:
        return []
    lines = ["", "## Duplicates inside one split (not leakage, but they shrink the effective set)", ""]
    rows = [
        [sp, c.get("exact_duplicate_pairs", 0), c.get("near_duplicate_pairs", 0)] for sp, c in within.items()
    ]
    lines += _table(rows, ["split", "exact duplicate pairs", "near-duplicate pairs"])
    return lines


def _shared_patients_markdown(shared: list[Mapping]) -> list[str]:
    if not shared:
        return []
    lines = ["", f"## Patients in more than one split ({len(shared)})", ""]
    rows = [[p["patient_id"], ", ".join(f"{k} {v}" for k, v in p["splits"].items())] for p in shared[:_SHOW]]
    lines += _table(rows, ["patient_id", "images per split"])
    return lines


def _exact_duplicates_markdown(pairs: list[Mapping], root: str | None) -> list[str]:
    if not pairs:
        return []
    lines = ["", f"## Exact duplicates across splits ({len(pairs)} pairs)", ""]
    rows = [
        [
            _short(p["a"]["image"], root),
            p["a"]["split"],
            _short(p["b"]["image"], root),
            p["b"]["split"],
            p["kind"],
        ]
        for p in pairs[:_SHOW]
    ]
    lines += _table(rows, ["image", "split", "duplicate", "split", "kind"])
    return lines


def _near_duplicates_markdown(pairs: list[Mapping], root: str | None) -> list[str]:
    """The near-duplicate pairs across splits, the closest (256-bit pHash, then 64-bit, then most
    keypoint inliers) first."""
    if not pairs:
        return []
    lines = ["", f"## Near-duplicates across splits ({len(pairs)} pairs)", ""]
    ordered = sorted(
        pairs,
        key=lambda p: (
            p["hamming_256"] is None,
            p["hamming_256"] or 0,
            p["hamming"] or 0,
            -(p.get("keypoint_inliers") or 0),
        ),
    )
    rows = [
        [
            _short(p["a"]["image"], root),
            p["a"]["split"],
            _short(p["b"]["image"], root),
            p["b"]["split"],
            _dash(p["hamming"]),
            _dash(p["hamming_256"]),
            _dash(p.get("pixel_difference")),
            _dash(p.get("embedding_similarity")),
            _dash(p.get("keypoint_inliers")),
            p["transform"],
        ]
        for p in ordered[:_SHOW]
    ]
    header = ["image", "split", "near-duplicate", "split", "Hamming 64", "Hamming 256"]
    header += ["pixel difference", "embedding similarity", "keypoint inliers", "transform"]
    lines += _table(rows, header)
    return lines


def _fix_markdown(report: Mapping) -> list[str]:
    lines = []
    c = report["clusters"]
    lines += [
        "",
        "## Fix",
        "",
        f"Linking patients and duplicates gives {c['count']} groups ({c['multi_item']} with more than one "
        f"image, the largest has {c['largest']}).",
    ]
    if report.get("regrouped_datalist"):
        lines.append(
            f"A regrouped datalist that keeps each group in one split: `{report['regrouped_datalist']}`. "
            f"It moves {report.get('regrouped_moved', 0)} image(s) of groups that spanned splits into the split "
            "holding most of the group; every other image keeps its split."
        )
        summary = report.get("regrouped_splits")
        if summary:
            lines.append("Its split sizes: " + ", ".join(f"{k} {v}" for k, v in summary.items()) + ".")
    return lines


def _confound_markdown(report: Mapping) -> list[str]:
    found = report.get("confounds")
    if not found:
        return []
    s = found["settings"]
    lines = [
        "",
        "## Confounds: image properties per split and class",
        "",
        f"A property is flagged when it predicts the label far better than chance: {s['association']}, or "
        f"{s['shortcut']}. Sizes: {s['size']}.",
    ]
    if s.get("multi_label"):
        lines.append("Multi-label: " + s["multi_label"] + "; the counts are positives per class.")
    lines += ["", "**Flagged:**" if found["flags"] else "No property is flagged.", ""]
    lines += [f"- {flag['text']}" for flag in found["flags"]]
    constant = {t: next(iter(e["images"])) for t, e in found["properties"].items() if len(e["images"]) == 1}
    if constant:
        lines += ["", "The same for every image: " + ", ".join(f"{t} {v}" for t, v in constant.items()) + "."]
    splits, labels = list(report["splits"]), list(report["labels"])
    columns = [(sp, c) for sp in splits for c in labels]
    wide = len(columns) > 16
    for title, entry in found["properties"].items():
        if title in constant:
            continue
        v = entry.get("cramers_v", {})
        stat = ", ".join(f"{'' if t == 'label' else t + ': '}V {x}" for t, x in list(v.items())[:6])
        lines += ["", f"### {title} ({stat})", ""]
        shown = list(entry["counts"].items())[:_SHOW]
        if wide:  # many splits x classes: one column per class, all splits together
            rows = [
                [
                    value,
                    *(sum(c.get(name, 0) for c in per.values()) for name in labels),
                    entry["images"][value],
                ]
                for value, per in shown
            ]
            lines += _table(rows, [title, *labels, "images"])
        else:
            rows = [
                [value, *(per.get(sp, {}).get(name, 0) for sp, name in columns), entry["images"][value]]
                for value, per in shown
            ]
            lines += _table(rows, [title, *(f"{sp}: {name}" for sp, name in columns), "images"])
        if len(entry["counts"]) > _SHOW:
            lines.append(f"(first {_SHOW} of {len(entry['counts'])} values; audit.json lists all)")
    return lines


def write_audit(report: Mapping, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``audit.json`` and ``audit.md`` to ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    return {
        "json": atomic_write_json(out_dir / "audit.json", public),
        "markdown": atomic_write_text(out_dir / "audit.md", audit_markdown(report)),
    }

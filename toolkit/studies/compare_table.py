"""The files of a model comparison: ``comparison.md``, ``comparison.csv`` and ``comparison.json``.

Input is :func:`toolkit.evaluation.compare.compare_predictions`' result (None when no model could be
scored) and one row per model in the order given: ``{"name", "status", ...}``; a row whose status
is not ``ok`` carries ``stage``, ``error`` (one line) and ``log`` and is listed with them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from toolkit.io import atomic_write_csv, atomic_write_json, atomic_write_text

SHOWN = ("accuracy", "precision", "recall", "f1", "auroc")
HEADINGS = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "auroc": "AUROC",
}
CSV_COLUMNS = (
    ["model", "status", "bundle", "best"]
    + [f"{m}{end}" for m in SHOWN for end in ("", "_ci_low", "_ci_high")]
    + [
        "accuracy_difference",
        "mcnemar_b",
        "mcnemar_c",
        "accuracy_p",
        "accuracy_p_holm",
        "accuracy_bootstrap_p",
        "accuracy_verdict",
        "auroc_difference",
        "auroc_test",
        "auroc_p",
        "auroc_p_holm",
        "auroc_verdict",
        "stage",
        "error",
        "log",
    ]
)


def write_comparison(
    result: Mapping | None,
    rows: Sequence[Mapping],
    out_dir: str | os.PathLike,
    context: Mapping | None = None,
) -> dict[str, Path]:
    """Write the three files into ``out_dir``; ``context`` (command, split, ...) goes into the JSON
    and, as far as it has ``split`` / ``datalist``, into the Markdown heading. Returns their paths."""
    out_dir = Path(out_dir)
    context = dict(context or {})
    doc = {**context, "models": [dict(r) for r in rows], "comparison": result}
    return {
        "json": atomic_write_json(out_dir / "comparison.json", doc, indent=2),
        "csv": atomic_write_csv(out_dir / "comparison.csv", CSV_COLUMNS, [_csv_row(result, r) for r in rows]),
        "markdown": atomic_write_text(out_dir / "comparison.md", markdown(result, rows, context)),
    }


def _csv_row(result: Mapping | None, row: Mapping) -> list:
    values: dict = {"model": row["name"], "status": row["status"], "bundle": row.get("bundle", "")}
    values.update(stage=row.get("stage", ""), error=row.get("error", ""), log=row.get("log", ""))
    scored = result["models"].get(row["name"]) if result and row["status"] == "ok" else None
    if scored:
        values["best"] = row["name"] == result["reference"]
        for metric in SHOWN:
            values[metric] = scored["metrics"][metric]
            values[f"{metric}_ci_low"] = scored["intervals"][metric]["low"]
            values[f"{metric}_ci_high"] = scored["intervals"][metric]["high"]
        test = result["comparisons"].get(row["name"])
        if test:
            acc, auc = test["accuracy"], test["auroc"]
            values.update(
                accuracy_difference=acc["difference"],
                mcnemar_b=acc["mcnemar"]["b_reference_only"],
                mcnemar_c=acc["mcnemar"]["c_other_only"],
                accuracy_p=acc["p_value"],
                accuracy_p_holm=acc["p_holm"],
                accuracy_bootstrap_p=acc["bootstrap"]["p_value"],
                accuracy_verdict=acc["verdict"],
                auroc_difference=auc["difference"],
                auroc_test=auc["test"],
                auroc_p=auc["p_value"],
                auroc_p_holm=auc["p_holm"],
                auroc_verdict=auc["verdict"],
            )
    return ["" if values.get(c) is None else values.get(c, "") for c in CSV_COLUMNS]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _with_interval(value: float | None, interval: Mapping) -> str:
    if value is None:
        return "n/a"
    if interval.get("low") is None:
        return _number(value)
    return f"{value:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _test_cell(entry: Mapping | None) -> str:
    if not entry:
        return "reference"
    if entry["difference"] is None:
        return "n/a"
    p = _p(entry["p_holm"])
    if entry.get("p_is_bound") and entry["p_holm"] is not None and not p.startswith("<"):
        p = f"<= {p}"  # no resample reached 0: the smallest p the bootstrap can give
    text = f"{entry['difference']:+.3f}, p {p}"
    verdict = entry["verdict"]
    return f"{text}, **{verdict}**" if verdict in ("worse", "better") else f"{text}, {verdict}"


def _escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown(result: Mapping | None, rows: Sequence[Mapping], context: Mapping | None = None) -> str:
    """The comparison as a Markdown table with footnotes stating how every number was made."""
    context = context or {}
    heads = [HEADINGS[m] for m in SHOWN] + ["accuracy vs best", "AUROC vs best", "status"]
    lines = ["# Model comparison", ""]
    if context.get("split"):
        split = context["split"]
        lines += [
            f"Split `{split.get('fingerprint')}` (`{split.get('datalist')}`, seed {split.get('seed')}); "
            f"images per split: {split.get('counts')}.",
            "",
        ]
    if context.get("overrides") is not None:
        own = [f"{r['name']} `{' '.join(r['overrides'])}`" for r in rows if r.get("overrides")]
        lines += [
            f"Bundle overrides for every run: `{' '.join(context['overrides']) or 'none'}`"
            + (f"; for one model only: {', '.join(own)}." if own else "."),
            "",
        ]
    lines += ["| model | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for row in rows:
        scored = result["models"].get(row["name"]) if result and row["status"] == "ok" else None
        if not scored:
            where = f" (log: `{row['log']}`)" if row.get("log") else ""
            status = f"failed at {row.get('stage', '?')}: {_escape(row.get('error', ''))}{where}"
            lines.append(f"| {row['name']} | " + " | ".join([""] * (len(heads) - 1) + [status]) + " |")
            continue
        name = row["name"] + (" (best)" if row["name"] == result["reference"] else "")
        cells = [_with_interval(scored["metrics"][m], scored["intervals"][m]) for m in SHOWN]
        test = result["comparisons"].get(row["name"])
        cells += [_test_cell(test and test["accuracy"]), _test_cell(test and test["auroc"]), "ok"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *footnotes(result)]
    return "\n".join(lines) + "\n"


def footnotes(result: Mapping | None) -> list[str]:
    """What the numbers of the table are, in plain words."""
    if not result:
        return ["No model produced test predictions, so there is nothing to compare."]
    t, s = result["test_set"], result["settings"]
    units = (
        f"{t['num_units']} patients"
        if t["unit"] == "patient"
        else f"{t['num_units']} images (no patient ids)"
    )
    n_compared = len(result["comparisons"])
    notes = [
        f"- Test set: {t['num_images']} images of {units}; classes: {', '.join(t['class_names'])}.",
        f"- Brackets: {s['confidence']:.0%} percentile bootstrap intervals, {s['n_resamples']} resamples of "
        f"the {t['unit']}s (seed {s['seed']}); every model was scored on the same resamples.",
    ]
    if t["multi_label"]:
        used = {json.dumps(m.get("threshold")) for m in result["models"].values()}
        rule = (
            f"probability >= {next(iter(used))}"
            if len(used) == 1 and "[" not in next(iter(used))
            else "each model's own per-finding thresholds (comparison.json; a model's evaluation chooses "
            "them on validation, recorded in eval/metrics.json)"
        )
        notes.append(
            f"- Multi-label: a finding is predicted at {rule}; accuracy is the exact-match (subset) accuracy; "
            "precision, recall, F1 and AUROC are macro averages over the findings."
        )
    else:
        notes.append("- Precision, recall, F1: macro averages over the classes; AUROC: macro one-vs-rest.")
    ranked = HEADINGS[s["ranked_by"]] + ("" if s["ranked_by"] == s["rank_by"] else " (AUROC undefined)")
    if not n_compared:
        notes.append(f"- Best: highest {ranked}; no other model was scored, so nothing was tested.")
        return notes
    notes.append(
        f"- Best: highest {ranked}. 'vs best' gives the difference (model - best) and its p-value, "
        f"Holm-adjusted over the {n_compared} comparison(s) of that metric; **worse** / **better** when "
        f"the adjusted p < {s['alpha']}, n.s. otherwise. No correction across the two metrics."
    )
    notes.append(
        "- Accuracy: exact McNemar test (two-sided binomial test on the discordant images); it treats "
        "images as independent"
        + (
            ", so comparison.csv also gives the paired patient-level bootstrap p-value (accuracy_bootstrap_p)."
            if t["unit"] == "patient"
            else "."
        )
    )
    tests = {c["auroc"]["test"] for c in result["comparisons"].values()}
    if "DeLong" in tests:
        notes.append("- AUROC: DeLong's test (binary task, one image per unit).")
    else:
        notes.append(
            f"- AUROC: paired bootstrap of the difference ({s['n_resamples']} {t['unit']}-level resamples; "
            "p = twice the smaller share of resampled differences on either side of 0, with +1 correction; "
            "'<=' when no resample reached 0, the smallest p the resamples can give); per-class DeLong "
            "tests (images as independent, unadjusted) are in comparison.json."
        )
    return notes

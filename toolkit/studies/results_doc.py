"""``docs/results.md`` from the experiment summaries of ``toolkit.studies.experiments``: our figures
with 95% CIs beside the published ones, and the data-efficiency table (pretrained vs scratch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

METRICS = ("accuracy", "auroc", "sensitivity", "specificity")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _with_ci(arm: Mapping, metric: str) -> str:
    if arm.get(metric) is None:
        return "n/a"
    low, high = arm.get(metric + "_ci") or (None, None)
    return _num(arm[metric]) + ("" if low is None else f" [{low:.3f}, {high:.3f}]")


def minutes(seconds: float | None) -> str:
    """``seconds`` as minutes with one decimal, ``n/a`` when unknown."""
    return "n/a" if seconds is None else f"{seconds / 60:.1f}"


def training_time(arm: Mapping) -> str:
    """CPU minutes of the training epochs when recorded, else the run's wall minutes (marked)."""
    if arm.get("train_cpu_seconds") is not None:
        return f"{minutes(arm['train_cpu_seconds'])} CPU-min"
    return f"{minutes(arm.get('train_seconds'))} wall-min"


def _published_cell(published: Mapping) -> str:
    values = ", ".join(f"{m} {published[m]:.3f}" for m in METRICS if m in published)
    return f"{values or 'none'} ({published['source']})"


def reached(arm: Mapping, published: Mapping) -> str:
    """``yes`` when every published metric is met by our point estimate, else what falls short; ``-``
    for an entry with a source and no figure (a row with nothing comparable published)."""
    if not any(m in published for m in METRICS):
        return "-"
    short = [m for m in METRICS if m in published and (arm.get(m) is None or arm[m] < published[m])]
    return (
        "yes"
        if not short
        else "no: " + ", ".join(f"{m} {_num(arm.get(m))} < {published[m]:.3f}" for m in short)
    )


def published_table(summaries: Sequence[Mapping]) -> list[str]:
    """One row per (arm, seed) trained on all labels of an experiment with a published figure."""
    lines = [
        "| data set | arm | seed | epochs | training | ACC [95% CI] | AUROC [95% CI] "
        "| sensitivity | specificity | published | reached? |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in summaries:
        published = summary["spec"].get("published") or []
        for run in summary["runs"]:
            if run["fraction"] < 1 or not published:
                continue
            for name, arm in run["arms"].items():
                if arm["status"] != "ok":
                    lines.append(
                        f"| {summary['spec']['title']} | {name} | {run['seed']} | failed: {arm.get('error')} |"
                    )
                    continue
                for k, pub in enumerate(published):
                    lead = (
                        f"| {summary['spec']['title']} ({run['images'].get('test')} test images) | {name} "
                        f"| {run['seed']} | {arm.get('epochs')} | {training_time(arm)} "
                        f"| {_with_ci(arm, 'accuracy')} | {_with_ci(arm, 'auroc')} "
                        f"| {_with_ci(arm, 'sensitivity')} | {_with_ci(arm, 'specificity')} "
                    )
                    if k:
                        lead = "| | | | | | | | | | "
                    lines.append(lead + f"| {_published_cell(pub)} | {reached(arm, pub)} |")
    return lines


def weights_lines(summaries: Sequence[Mapping]) -> list[str]:
    """Where each published-figure row's weights are and their SHA-256 (what a re-run compares)."""
    out = []
    for summary in summaries:
        for run in summary["runs"]:
            if run["fraction"] < 1 or not summary["spec"].get("published"):
                continue
            for name, arm in run["arms"].items():
                if arm.get("weights_sha256"):
                    out.append(
                        f"- {summary['spec']['title']}, `{name}`, seed {run['seed']}: "
                        f"`{run['folder']}/runs/{name}/models/model.pt`, sha256 `{arm['weights_sha256']}`"
                    )
    return out


def efficiency(summary: Mapping, subset: str | None = None) -> list[dict]:
    """Per label fraction: each arm's metrics over seeds and, for every other arm, its difference from
    the first arm (scratch): ``row["versus"][arm]``.

    The verdict compares the difference of the seed means with the mean width of the scratch arm's
    95% CI (as the issue asks: better "by more than the CI width")."""
    arms = list(summary["spec"]["arms"])
    rows = []
    for fraction in sorted({r["fraction"] for r in summary["runs"]}):
        runs = [r for r in summary["runs"] if r["fraction"] == fraction]
        per_arm = {}
        for arm in arms:
            values = []
            for run in runs:
                source = run["subsets"].get(subset, {}).get("arms", {}) if subset else run["arms"]
                if arm in source and source[arm].get("accuracy") is not None:
                    values.append(source[arm])
            per_arm[arm] = values
        row = {
            "fraction": fraction,
            "train_images": [r["images"].get("training") for r in runs],
            "arms": per_arm,
            "paired": [r.get("paired") for r in runs],
        }
        scratch, others = arms[0], arms[1:]
        row["versus"] = {}
        if per_arm[scratch]:
            row["scratch_ci_width"] = float(
                np.mean([v["accuracy_ci"][1] - v["accuracy_ci"][0] for v in per_arm[scratch]])
            )
            scratch_mean = np.mean([v["accuracy"] for v in per_arm[scratch]])
            for other in (a for a in others if per_arm[a]):
                difference = float(np.mean([v["accuracy"] for v in per_arm[other]]) - scratch_mean)
                row["versus"][other] = {
                    "difference": difference,
                    "beats_by_more_than_ci_width": difference > row["scratch_ci_width"],
                }
        rows.append(row)
    return rows


def _seed_cell(values: Sequence[Mapping], metric: str) -> str:
    if not values:
        return "n/a"
    points = [v[metric] for v in values if v.get(metric) is not None]
    if not points:
        return "n/a"
    seeds = "; ".join(_with_ci(v, metric) for v in values)
    return f"**{np.mean(points):.3f}** (sd {np.std(points, ddof=1) if len(points) > 1 else 0:.3f}; {seeds})"


def efficiency_table(summary: Mapping, subset: str | None = None) -> list[str]:
    arms = list(summary["spec"]["arms"])
    header = "| training labels | images | " + " | ".join(
        f"{a}: ACC mean (sd; each seed [95% CI])" for a in arms
    )
    header += " | " + " | ".join(f"{a}: AUROC mean" for a in arms)
    others = arms[1:]
    difference = "difference of means" if len(others) == 1 else "difference of means ({})"
    beats = "more than the CI width?" if len(others) == 1 else "{} more than the CI width?"
    header += " | " + " | ".join(difference.format(a) for a in others) + " | scratch CI width | "
    lines = [header + " | ".join(beats.format(a) for a in others) + " |"]
    lines.append("|" + "---|" * (2 + 2 * len(arms) + 2 * len(others) + 1))
    for row in efficiency(summary, subset):
        cells = [
            f"{round(row['fraction'] * 100)} %",
            "/".join(str(n) for n in sorted(set(row["train_images"]))),
        ]
        cells += [_seed_cell(row["arms"][a], "accuracy") for a in arms]
        cells += [
            _num(float(np.mean([v["auroc"] for v in row["arms"][a] if v.get("auroc") is not None])))
            if row["arms"][a]
            else "n/a"
            for a in arms
        ]
        versus = [row["versus"].get(a) for a in others]
        cells += [f"{v['difference']:+.3f}" if v else "n/a" for v in versus]
        cells.append(f"{row['scratch_ci_width']:.3f}" if "scratch_ci_width" in row else "n/a")
        cells += [("yes" if v["beats_by_more_than_ci_width"] else "no") if v else "n/a" for v in versus]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_lines(summary: Mapping) -> list[str]:
    """McNemar p-values (accuracy) of the paired comparison, per fraction and seed."""
    out = []
    for run in summary["runs"]:
        paired = run.get("paired")
        if not paired:
            continue
        for name, tests in paired.items():
            if name == "reference":
                continue
            acc, auc = tests["accuracy"], tests["auroc"]
            out.append(
                f"- {round(run['fraction'] * 100)} % labels, seed {run['seed']}: {name} minus "
                f"{paired['reference']}: accuracy {acc['difference']:+.3f} ({acc['test']} p = {acc['p']:.3g}), "
                f"AUROC {_signed(auc['difference'])} ({auc['test']} p = {_num(auc['p'])})"
            )
    return out


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def time_to_accuracy_lines(summary: Mapping) -> list[str]:
    """Per arm: the first epoch whose checkpoint reached each target test accuracy, and its
    cumulative training CPU minutes; then test accuracy after every epoch."""
    timed = summary["spec"].get("time_to_accuracy") or {}
    targets = timed.get("targets", [])
    lines = []
    for run in summary["runs"]:
        for arm, rows in (run.get("time_to_accuracy") or {}).items():
            reached_at = []
            for target in targets:
                hit = next((r for r in rows if r["accuracy"] is not None and r["accuracy"] >= target), None)
                reached_at.append(
                    f"{target:.1%}: "
                    + (
                        f"{hit['train_cpu_minutes']:.1f} CPU-min (epoch {hit['epoch']})"
                        if hit
                        else f"not reached in {rows[-1]['train_cpu_minutes']:.1f} CPU-min ({len(rows)} epochs)"
                    )
                )
            curve = ", ".join(
                f"{r['epoch']}: {_num(r['accuracy'])} @ {r['train_cpu_minutes']:.1f}" for r in rows
            )
            lines += [
                f"- `{arm}` (labels {round(run['fraction'] * 100)} %, seed {run['seed']}): "
                + "; ".join(reached_at),
                f"  - test accuracy after each epoch (epoch: accuracy @ training CPU-minutes): {curve}",
            ]
    return lines

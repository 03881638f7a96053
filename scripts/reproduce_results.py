"""Train and evaluate every experiment of configs/experiments/ on this machine and write docs/results.md.

    python scripts/reproduce_results.py                         # all (pretraining first), then the doc
    python scripts/reproduce_results.py --only ssl_pool --only brain_mri
    python scripts/reproduce_results.py --render-only           # the doc from runs already made

Reads the shared data from $CIT_SHARED_DATA (default ../shared/data); runs go to runs/results/
(a run whose command, bundle configs and toolkit code are unchanged is reused, not retrained;
the doc marks experiments whose runs were made with other configs or code). Every figure in the
doc is computed from those runs' test predictions; nothing is copied in by hand except the
published figures, which come from the experiment files with their sources.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from toolkit.bundle.datalists import read_json_object  # noqa: E402
from toolkit.io import atomic_write_text  # noqa: E402
from toolkit.studies import experiments, results_doc  # noqa: E402
from toolkit.studies.compare import recipe_digest  # noqa: E402


def stale_runs(name: str, spec: dict, out_dir: Path) -> tuple[int, int]:
    """(stale, all): how many runs of experiment ``name`` were made with another recipe (configs or
    toolkit code, ``recipe_digest``) than this checkout's."""
    current = recipe_digest(REPO_ROOT / "bundles" / spec["bundle"])
    if spec["kind"] == "pretrain":
        records = [read_json_object(out_dir / name / "run.json")]
    else:
        records = [
            read_json_object(r).get("training") or {}
            for r in (out_dir / name).glob("labels*_seed*/runs/*/run.json")
        ]
    # a run given an earlier run's weights ({model:...}) records their hash after the digest
    return sum(str(r.get("recipe")).split("-")[0] != current for r in records), len(records)


def _stale_line(name: str, counts: tuple[int, int]) -> list[str]:
    stale, total = counts
    if not stale:
        return []
    which = {1: "its run", 2: "both its runs"}.get(total, f"all {total} of its runs")
    if stale < total:
        which = f"{stale} of its {total} runs"
    return [
        f"- **{which} made with other configs or toolkit code than this checkout**: the figures are "
        f"those of that earlier recipe; `--only {name}` re-makes them"
    ]


def _stale_summary(stale: dict[str, tuple[int, int]]) -> list[str]:
    names = [n for n, (count, _) in stale.items() if count]
    if not names:
        return []
    return [
        f"**Made with an earlier recipe than this checkout** (configs or toolkit code changed since; "
        f"marked under The experiments): {', '.join(f'`{n}`' for n in names)}.",
        "",
    ]


def render(specs: dict[str, dict], out_dir: Path) -> str:
    summaries = [
        read_json_object(out_dir / n / "summary.json") for n in specs if specs[n]["kind"] == "classification"
    ]
    summaries = [s for s in summaries if s]
    missing = [
        n
        for n in specs
        if specs[n]["kind"] == "classification" and not (out_dir / n / "summary.json").exists()
    ]
    stale = {n: stale_runs(n, spec, out_dir) for n, spec in specs.items() if n not in missing}
    lines = [
        "# Results on real data",
        "",
        f"Written by `python scripts/reproduce_results.py` on {time.strftime('%Y-%m-%d')} "
        f"({platform.processor() or platform.machine()}, {_cores()} CPU cores, no GPU): every figure below is "
        "computed from the test predictions of the runs under `runs/results/` (re-run the command to "
        "reproduce them; a run whose command, configs and toolkit code are unchanged is reused, and an "
        "experiment whose runs were made with other configs or code says so). Experiments are the "
        "files under `configs/experiments/`; each (label fraction, seed) is one `cit compare` run of its "
        "arms on one saved split: test metrics with 95% percentile bootstrap CIs (1,000 resamples, by "
        "patient where the data set has patient ids), paired tests between arms (McNemar for accuracy, "
        "DeLong or paired bootstrap for AUROC). The checkpoint is chosen on validation; the test set "
        "chooses nothing. Training time: CPU-minutes of the training epochs (all threads of the training "
        "process, without validation); `wall-min` marks a run made before that was recorded, whose "
        "wall time includes validation and other jobs on the shared machine.",
        "",
        *_stale_summary(stale),
        "## Our figures beside the published ones",
        "",
        *results_doc.published_table(summaries),
        "",
        "Weights of these rows (the files the runs wrote; a re-run on other hardware gives equivalent, "
        "not byte-identical, weights):",
        "",
        *results_doc.weights_lines(summaries),
        "",
        "Why the published figures are (not) reached is discussed per data set below.",
        "",
        "## Data efficiency: our pretrained backbone vs training from scratch",
        "",
        "Fine-tuning from a pretrained start vs random initialisation (`scratch`) with 10 %, 25 % and 100 % "
        "of the target's training labels (a seeded, stratified, patient-grouped subset of the training split; "
        "validation and test kept whole), two seeds each (the seed draws the label subset and the "
        "initialisation of the head / network). Pretrained arms: `simclr` (the project's SimCLR backbone, "
        "ssl_pool), `imagenet` (EfficientNet-Lite0 from its ImageNet-1k weights), `imagenet_distilled` (the "
        "study's ResNet-18 taught by that Lite0 on the target's unlabelled training images: distill_pool, "
        "distill_pool_kermany). The last columns ask, for each pretrained arm, whether the difference of the "
        "seed means exceeds the mean width of the scratch arm's 95% CI. That bar is strict: the width spans "
        "about four standard errors of one run's accuracy, more than a difference needs to be significant in "
        "the paired tests listed under each table.",
        "",
    ]
    for summary in summaries:
        if {r["fraction"] for r in summary["runs"]} == {
            1.0
        }:  # no label fraction: not a data-efficiency question
            continue
        lines += [f"### {summary['spec']['title']}", "", *results_doc.efficiency_table(summary), ""]
        for subset in summary["spec"].get("test_subsets", {}):
            lines += [f"Test set {subset}:", "", *results_doc.efficiency_table(summary, subset), ""]
        lines += ["Paired tests per run:", "", *results_doc.paired_lines(summary), ""]
    for summary in summaries:
        if any(r.get("time_to_accuracy") for r in summary["runs"]):
            lines += [
                f"## Time to accuracy: {summary['spec']['title']}",
                "",
                TIME_NOTE,
                "",
                *results_doc.time_to_accuracy_lines(summary),
                "",
            ]
    lines += ["## The experiments", ""]
    for name, spec in specs.items():
        lines += [f"### `{name}`: {spec['title']}", ""]
        if spec["kind"] == "pretrain":
            record = read_json_object(out_dir / name / "run.json")
            lines += [
                f"- pools: {', '.join(spec['sources'])} (under the shared data folder)",
                f"- bundle `{spec['bundle']}`, overrides `{spec['overrides']}`",
                f"- wall time: {results_doc.minutes(record.get('seconds'))} min",
                f"- {spec['note']}",
                *_stale_line(name, stale[name]),
                "",
            ]
            continue
        lines += [
            f"- split: {spec['split_note']}",
            f"- bundle `{spec['bundle']}`, overrides `{spec['overrides']}`",
            "- arms: " + "; ".join(f"`{a}` {o or '(bundle defaults)'}" for a, o in spec["arms"].items()),
            f"- label fractions {spec.get('label_fractions', [1.0])}, seeds {spec.get('seeds', [0])}",
        ]
        lines += _findings_line(read_json_object(out_dir / name / "summary.json"))
        if spec.get("discussion"):
            lines += [f"- {spec['discussion']}"]
        if name in missing:
            lines += ["- **not run in this pass** (`--only " + name + "`)"]
        else:
            lines += _stale_line(name, stale[name])
        lines.append("")
    return "\n".join(lines) + "\n"


def _findings_line(summary: dict | None) -> list[str]:
    """Multi-label experiments: the findings left out of the scores (the same in every run: one split)."""
    runs = [run for run in (summary or {}).get("runs", []) if "findings_left_out" in run]
    if not runs:
        return []
    names = ", ".join(sorted({f for run in runs for f in run["findings_left_out"]})) or "none"
    return [
        "- multi-label: AUROC is the mean over the findings with at least "
        f"{experiments.MIN_POSITIVES} positive and {experiments.MIN_POSITIVES} negative test images, "
        f"each model at its own thresholds chosen on validation; left out: {names}; exact-match accuracy "
        "is not shown"
    ]


TIME_NOTE = (
    "Every epoch's checkpoint of the run trained on all labels was evaluated on the test set after "
    "training (it stopped and selected nothing); CPU-minutes are the CPU time of the training process "
    "(all its threads) over the epochs' iterations, without validation, evaluation or start-up. It grows "
    "less than wall time when other jobs share the machine, but it does grow (a training process whose "
    "threads wait for the cores still counts some of the wait: 23 CPU-seconds an epoch alone, 37-63 "
    "while another job ran, in distill_pool's run of 2026-12-07); on an otherwise idle 2-core machine "
    "a 2-thread run takes about half as many wall minutes."
)
PERF_START, PERF_END = (
    "<!-- time-to-accuracy: written by scripts/reproduce_results.py -->",
    "<!-- end time-to-accuracy -->",
)


def update_performance(doc: Path, summaries: list[dict]) -> None:
    """Replace the time-to-accuracy block of docs/performance.md (appended once if missing)."""
    body = []
    for summary in summaries:
        if any(r.get("time_to_accuracy") for r in summary["runs"]):
            body += [
                f"{summary['spec']['title']}: bundle `{summary['spec']['bundle']}`, "
                f"overrides `{summary['spec']['overrides']}`; see docs/results.md.",
                "",
                *results_doc.time_to_accuracy_lines(summary),
                "",
            ]
    if not body:
        return
    block = "\n".join([PERF_START, "## Time to accuracy", "", TIME_NOTE, "", *body, PERF_END])
    text = doc.read_text(encoding="utf-8") if doc.is_file() else ""
    if PERF_START in text and PERF_END in text:
        head, rest = text.split(PERF_START, 1)
        text = head + block + rest.split(PERF_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(doc, text)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="experiment name (repeatable)")
    parser.add_argument("--out", default=str(REPO_ROOT / "runs" / "results"), help="where the runs go")
    parser.add_argument("--doc", default=str(REPO_ROOT / "docs" / "results.md"), help="the Markdown to write")
    parser.add_argument(
        "--performance-doc",
        default=str(REPO_ROOT / "docs" / "performance.md"),
        help="its time-to-accuracy block is rewritten",
    )
    parser.add_argument(
        "--arm", action="append", default=[], help="run only this arm of each experiment (repeatable)"
    )
    parser.add_argument("--render-only", action="store_true", help="write the doc from the existing runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    out_dir = Path(args.out).resolve()
    data_dir = experiments.shared_data_dir()
    chosen = experiments.load_experiments(args.only)
    if not args.render_only:
        for name, spec in chosen.items():
            if spec["kind"] == "pretrain":
                experiments.run_pretrain(name, spec, out_dir, data_dir)
            else:
                experiments.run_classification(name, spec, out_dir, data_dir, only_arms=args.arm)
    specs = experiments.load_experiments()
    atomic_write_text(args.doc, render(specs, out_dir))
    summaries = [read_json_object(out_dir / n / "summary.json") for n in specs]
    update_performance(Path(args.performance_doc), [s for s in summaries if s])
    print(f"written: {args.doc}, {args.performance_doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write BENCHMARKS.md (and its per-class recall plot) from the results of compare.py.

Usage::

    python benchmarks/report.py [--results benchmarks/results/compare.json] [--out BENCHMARKS.md]
        [--plot-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_RESULTS = HERE / "results" / "compare.json"

TOOL_NAMES = {
    "ours": "scNym (ours)",
    "original": "scNym 0.3.2 (original)",
    "ours_supervised": "scNym (ours), supervised only",
    "ours_all_genes": "scNym (ours), all genes",
    "ours_log1p_cpm": "scNym (ours), model exported with log1p(CPM) input",
    "ours_zarr": "scNym (ours), reading the zarr store",
    "celltypist": "CellTypist 1.7.1",
    "lr": "logistic regression (2,000 HVGs)",
}
TOOL_ORDER = list(TOOL_NAMES)
TASK_NAMES = {"ctrl_to_stim": "ctrl → stim", "stim_to_ctrl": "stim → ctrl"}
SCNYM_CONFIGS = ("no_new_identity", "new_identity_discovery")
METRICS = ("cell_type_acc", "cell_type_bacc", "cell_type_coarse_acc", "cell_type_coarse_bacc")
METRIC_NAMES = ("acc. `cell_type`", "bal. acc. `cell_type`", "acc. coarse", "bal. acc. coarse")
SCNYM_TOOLS = ("ours", "original", "ours_supervised", "ours_all_genes")
TARGET_TASK = "ctrl_to_stim"
ANNOTATION_TOOLS = ("ours", "ours_log1p_cpm", "ours_zarr", "original", "celltypist")
#: The claims' thresholds (issue #6).
EPOCH_TIME_RATIO_MAX = 0.5
ANNOTATE_SPEED_RATIO_MIN = 10.0
ANNOTATE_RSS_RATIO_MAX = 0.25
#: Share of the machine's CPU taken by other processes above which timings are flagged.
OTHER_CPU_WARN = 0.1


# -- tables of runs ----------------------------------------------------------------------------


def flatten(results: dict) -> pd.DataFrame:
    """One row per successful run and variant (tool, config, task, seed, metrics, costs)."""
    rows = []
    for record in results["runs"].values():
        if record.get("status") != "ok":
            continue
        for row in record["rows"]:
            rows.append(
                {
                    "tool": record["tool"],
                    "train_config": record["config"],
                    "task": record["task"],
                    "seed": record["seed"],
                    "seeded": record.get("seeded", record["tool"] in SCNYM_TOOLS),
                    "epochs": record["epochs"],
                    "train_seconds": record["train_seconds"],
                    "seconds_per_epoch": record["seconds_per_epoch"],
                    "train_seconds_per_epoch": record["train_seconds_per_epoch"],
                    "train_peak_rss_mb": record["train_peak_rss_mb"],
                    **{k: v for k, v in row.items() if k != "recall"},
                    "recall": row["recall"],
                }
            )
    frame = pd.DataFrame(rows)
    numeric = ["epochs", "seconds_per_epoch", "train_seconds_per_epoch", "train_peak_rss_mb"]
    for column in numeric if rows else []:
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    return frame


def failed_runs(results: dict) -> list[dict]:
    """Records of the runs that did not finish."""
    return [r for r in results["runs"].values() if r.get("status") != "ok"]


def requested_seeds(results: dict) -> list[int]:
    """The seeds the latest invocation asked for."""
    invocations = results.get("invocations") or [{}]
    return list(invocations[-1].get("arguments", {}).get("seeds", [0, 1, 2]))


def mean_sd(values: pd.Series, digits: int = 3) -> str:
    """``mean ± sd`` (sd over seeds, ddof 0; a single run shows its value)."""
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=0):.{digits}f}"


def stat(values: pd.Series, how: str = "median") -> float | None:
    """Median or mean of the values present; None when there are none."""
    values = values.dropna()
    return None if values.empty else float(getattr(values, how)())


def fmt(value, digits: int = 1, thousands: bool = False) -> str:
    """A number, or a dash when missing."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"


def group_order(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(tool, config) pairs in report order: by tool, the scNym presets' order, then by name."""
    pairs = frame[["tool", "config"]].drop_duplicates().itertuples(index=False)

    def key(pair):
        tool, config = pair
        rank = SCNYM_CONFIGS.index(config) if config in SCNYM_CONFIGS else len(SCNYM_CONFIGS)
        return TOOL_ORDER.index(tool), rank, config

    return sorted(pairs, key=key)


def accuracy_table(frame: pd.DataFrame, task: str, seeds: list[int]) -> list[str]:
    """Markdown table of one task: mean ± sd over seeds per tool and config."""
    lines = [
        "| tool | config | runs | " + " | ".join(METRIC_NAMES) + " | epochs | s / epoch "
        "(median) | train s | train peak RSS (MB) | predict cells/s |",
        "|---|---|---|" + "---|" * (len(METRICS) + 5),
    ]
    data = frame[frame["task"] == task]
    for tool, config in group_order(data):
        group = data[(data["tool"] == tool) & (data["config"] == config)]
        seeded = bool(group["seeded"].any())
        if seeded:
            runs = f"{len(group)} of {len(seeds)}"
        elif tool in SCNYM_TOOLS:
            runs = f"{len(group)} of 1 (first seed only)"
        else:
            runs = f"{len(group)} of 1 (deterministic)"
        cells = [mean_sd(group[m]) for m in METRICS]
        lines.append(
            f"| {TOOL_NAMES[tool]} | `{config}` | {runs} | " + " | ".join(cells) + " | "
            f"{fmt(stat(group['epochs'], 'mean'), 0)} | "
            f"{fmt(stat(group['seconds_per_epoch']), 2)} | "
            f"{fmt(stat(group['train_seconds'], 'mean'), 0, True)} | "
            f"{fmt(stat(group['train_peak_rss_mb']), 0, True)} | "
            f"{fmt(stat(group['predict_cells_per_s']), 0, True)} |"
        )
    return lines


def config_frame(frame: pd.DataFrame, tool: str, config: str, task: str) -> pd.DataFrame:
    """The rows of one tool, config and task."""
    keep = (frame["tool"] == tool) & (frame["config"] == config) & (frame["task"] == task)
    return frame[keep]


def epoch_time_rows(frame: pd.DataFrame) -> list[dict]:
    """Per task and scNym config: medians of seconds per epoch, ours and the original's."""
    rows = []
    pairs = [("ours", config) for config in SCNYM_CONFIGS] + [("ours_all_genes", "no_new_identity")]
    for task in TASK_NAMES:
        for tool, config in pairs:
            ours = config_frame(frame, tool, config, task)
            original = config_frame(frame, "original", config, task)
            if ours.empty or original.empty:
                continue
            row = {"task": task, "tool": tool, "config": config}
            for column in ("seconds_per_epoch", "train_seconds_per_epoch"):
                row[f"ours_{column}"] = ours[column].median()
                row[f"original_{column}"] = original[column].median()
                row[f"ratio_{column}"] = row[f"ours_{column}"] / row[f"original_{column}"]
            row["n"] = (len(ours), len(original))
            rows.append(row)
    return rows


def epoch_time_table(rows: list[dict]) -> list[str]:
    """Markdown table of the time per epoch, ours against the original."""
    lines = [
        "| task | ours | config | runs (ours, original) | ours s / epoch | original s / epoch | ratio "
        "ours / original | ours train s / epoch | original train s / epoch | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {TASK_NAMES[r['task']]} | {TOOL_NAMES[r['tool']]} | `{r['config']}` | "
            f"{r['n'][0]}, {r['n'][1]} | "
            f"{fmt(r['ours_seconds_per_epoch'], 2)} | {fmt(r['original_seconds_per_epoch'], 2)} | "
            f"**{fmt(r['ratio_seconds_per_epoch'], 2)}** | "
            f"{fmt(r['ours_train_seconds_per_epoch'], 2)} | "
            f"{fmt(r['original_train_seconds_per_epoch'], 2)} | "
            f"{fmt(r['ratio_train_seconds_per_epoch'], 2)} |"
        )
    return lines


def recall_frame(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per-class recall, one row per (tool, config, class): mean, sd and runs."""
    data = frame[frame["task"] == task]
    rows = []
    for tool, config in group_order(data):
        group = config_frame(data, tool, config, task)
        recalls = pd.DataFrame(list(group["recall"]))
        for cls in recalls.columns:
            rows.append(
                {
                    "tool": tool,
                    "config": config,
                    "class": cls,
                    "mean": recalls[cls].mean(),
                    "sd": recalls[cls].std(ddof=0) if len(recalls) > 1 else 0.0,
                    "n": len(recalls),
                }
            )
    return pd.DataFrame(rows)


def recall_table(recall: pd.DataFrame) -> list[str]:
    """Markdown table: classes as columns, (tool, config) as rows, mean ± sd."""
    if recall.empty:
        return ["(no runs)"]
    classes = sorted(recall["class"].unique())
    lines = ["| tool | config | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
    for (tool, config), group in recall.groupby(["tool", "config"], sort=False):
        by_class = group.set_index("class")
        cells = []
        for cls in classes:
            if cls not in by_class.index:
                cells.append("–")
                continue
            mean, sd, n = by_class.loc[cls, ["mean", "sd", "n"]]
            cells.append(f"{mean:.2f}" + (f" ± {sd:.2f}" if n > 1 else ""))
        lines.append(f"| {TOOL_NAMES[tool]} | `{config}` | " + " | ".join(cells) + " |")
    return lines


# -- plot --------------------------------------------------------------------------------------


def plot_recall(recall: pd.DataFrame, path: Path, title: str) -> bool:
    """Grouped bars of per-class recall, ours vs the original (mean, sd error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = recall[recall["tool"].isin(["ours", "original"])]
    if data.empty:
        return False
    classes = sorted(data["class"].unique())
    groups = [
        (tool, config)
        for config in SCNYM_CONFIGS
        for tool in ("ours", "original")
        if not data[(data["tool"] == tool) & (data["config"] == config)].empty
    ]
    width = 0.8 / len(groups)
    x = np.arange(len(classes))
    colors = {"ours": ("#1f77b4", "#6baed6"), "original": ("#d62728", "#fc9272")}
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(classes)), 5.5))
    for i, (tool, config) in enumerate(groups):
        group = data[(data["tool"] == tool) & (data["config"] == config)].set_index("class")
        group = group.reindex(classes)
        n = int(group["n"].max())
        ax.bar(
            x + (i - (len(groups) - 1) / 2) * width,
            group["mean"],
            width,
            yerr=group["sd"],
            capsize=2,
            color=colors[tool][SCNYM_CONFIGS.index(config)],
            label=f"{TOOL_NAMES[tool]}, {config} (n={n})",
        )
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("recall (mean ± sd over seeds)")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# -- annotation --------------------------------------------------------------------------------


def latest_annotation(results: dict) -> dict | None:
    """The annotation benchmark with the most cells."""
    annotation = results.get("annotation") or {}
    if not annotation:
        return None
    return annotation[max(annotation, key=int)]


def annotation_table(annotation: dict) -> list[str]:
    """Markdown table of end-to-end annotation: cells/s, peak RSS, ratios to the original."""
    tools = annotation["tools"]
    original = tools.get("original", {})
    lines = [
        "| tool | status | wall s | cells/s | peak RSS (MB) | accuracy `cell_type` | "
        "cells/s / the original's | peak RSS / the original's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for tool in ANNOTATION_TOOLS:
        entry = tools.get(tool)
        if entry is None:
            continue
        ok = entry.get("status") == "ok" and original.get("status") == "ok"
        speed = entry["cells_per_s"] / original["cells_per_s"] if ok else None
        rss = entry["peak_rss_mb"] / original["peak_rss_mb"] if ok else None
        lines.append(
            f"| {TOOL_NAMES[tool]} | {entry.get('status')} | {fmt(entry.get('wall_seconds'), 1)} | "
            f"{fmt(entry.get('cells_per_s'), 0, True)} | {fmt(entry.get('peak_rss_mb'), 0, True)} | "
            f"{fmt(entry.get('accuracy'), 3)} | {fmt(speed, 2)} | {fmt(rss, 3)} |"
        )
    return lines


# -- targets -----------------------------------------------------------------------------------


def verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("**met**" if met else "**missed**")


def accuracy_targets(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) of the Kang ctrl → stim balanced accuracy claims."""
    out = []
    celltypist = frame[(frame["tool"] == "celltypist") & (frame["task"] == TARGET_TASK)]
    best_ct = celltypist.groupby("config")["cell_type_bacc"].mean()
    for config in SCNYM_CONFIGS:
        ours = config_frame(frame, "ours", config, TARGET_TASK)["cell_type_bacc"]
        original = config_frame(frame, "original", config, TARGET_TASK)["cell_type_bacc"]
        target = f"`{config}`: our balanced accuracy ≥ the original's (mean over seeds)"
        if ours.empty or original.empty:
            out.append((target, "–", verdict(None)))
        else:
            measured = (
                f"{ours.mean():.3f} (n={len(ours)}) vs {original.mean():.3f} (n={len(original)}); "
                f"ratio {ours.mean() / original.mean():.3f}"
            )
            out.append((target, measured, verdict(ours.mean() >= original.mean())))
        target = f"`{config}`: our balanced accuracy > CellTypist's (best of its variants)"
        if ours.empty or best_ct.empty:
            out.append((target, "–", verdict(None)))
        else:
            measured = (
                f"{ours.mean():.3f} vs {best_ct.max():.3f} (`{best_ct.idxmax()}`); "
                f"ratio {ours.mean() / best_ct.max():.3f}"
            )
            out.append((target, measured, verdict(ours.mean() > best_ct.max())))
    return out


def speed_targets(epoch_rows: list[dict], annotation: dict | None) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) of the training and annotation speed and memory claims."""
    out = []
    paired = {(r["tool"], r["config"]): r for r in epoch_rows if r["task"] == TARGET_TASK}
    pairs = [("ours", config) for config in SCNYM_CONFIGS] + [("ours_all_genes", "no_new_identity")]
    for tool, config in pairs:
        who = "ours" if tool == "ours" else "ours reading all genes (like for like)"
        target = (
            f"`{config}`: training time per epoch {who} ≤ {EPOCH_TIME_RATIO_MAX}× the original's"
        )
        row = paired.get((tool, config))
        if row is None:
            out.append((target, "–", verdict(None)))
            continue
        ratio = row["ratio_seconds_per_epoch"]
        measured = (
            f"{row['ours_seconds_per_epoch']:.2f} s vs {row['original_seconds_per_epoch']:.2f} s "
            f"(medians); ratio {ratio:.2f}"
        )
        out.append((target, measured, verdict(ratio <= EPOCH_TIME_RATIO_MAX)))
    tools = (annotation or {}).get("tools", {})
    original = tools.get("original", {})
    cells = f"{annotation['cells']:,}" if annotation else "100,000"
    whos = {"ours": "ours", "ours_log1p_cpm": "ours, log1p(CPM) export",
            "ours_zarr": "ours, reading the zarr store"}  # fmt: skip
    for tool, who in whos.items():
        ours = tools.get(tool, {})
        if tool != "ours" and not ours:
            continue
        speed_target = (
            f"annotation of {cells} cells: {who} ≥ {ANNOTATE_SPEED_RATIO_MIN:g}× the original's "
            "cells/s"
        )
        rss_target = f"annotation of {cells} cells: peak RSS {who} ≤ {ANNOTATE_RSS_RATIO_MAX}× the original's"
        if ours.get("status") != "ok" or original.get("status") != "ok":
            out += [(speed_target, "–", verdict(None)), (rss_target, "–", verdict(None))]
            continue
        speed = ours["cells_per_s"] / original["cells_per_s"]
        rss = ours["peak_rss_mb"] / original["peak_rss_mb"]
        out.append(
            (
                speed_target,
                f"{ours['cells_per_s']:,.0f} vs {original['cells_per_s']:,.0f} cells/s; "
                f"ratio {speed:.1f}",
                verdict(speed >= ANNOTATE_SPEED_RATIO_MIN),
            )
        )
        out.append(
            (
                rss_target,
                f"{ours['peak_rss_mb']:,.0f} vs {original['peak_rss_mb']:,.0f} MB; ratio {rss:.3f}",
                verdict(rss <= ANNOTATE_RSS_RATIO_MAX),
            )
        )
    return out


# -- document ----------------------------------------------------------------------------------


def machine_section(results: dict) -> list[str]:
    """The machine and the versions of each tool's environment."""
    invocations = results.get("invocations") or [{}]
    last = invocations[-1]
    machine = last.get("machine", {})
    lines = [
        "## Machine and versions",
        "",
        f"- CPU: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores (as the OS "
        f"reports them), {machine.get('memory_gb', '?')} GB RAM; {machine.get('os', '?')}; "
        "no GPU used (every tool on the CPU, default threads).",
    ]
    cpus = {i.get("machine", {}).get("cpu") for i in invocations}
    hosts = {i.get("machine", {}).get("hostname") for i in invocations}
    if len(cpus) > 1 or len(hosts) > 1:
        lines.append(
            f"- **The results were collected over {len(invocations)} invocations on "
            f"different machines** ({', '.join(sorted(map(str, cpus)))}): ratios may mix machines."
        )
    for tool, versions in last.get("versions", {}).items():
        listed = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "error")
        if "error" in versions:
            listed += f" (error: {versions['error'][:200]})"
        lines.append(f"- {TOOL_NAMES.get(tool, tool)} environment: {listed}")
    return lines + load_note(results)


def describe_ran(ran: list[str]) -> str:
    """'ran 12 training runs and the annotation of 100000 cells' from an invocation's keys."""
    runs = [key for key in ran if not key.startswith("annotation/")]
    parts = [f"ran {len(runs)} training run{'s' * (len(runs) != 1)}"] if runs else []
    parts += [f"the annotation of {key.split('/')[1]} cells" for key in ran if key not in runs]
    return " and ".join(parts) if runs else "ran " + " and ".join(parts)


def commands_section(results: dict, report_command: str) -> list[str]:
    """The exact commands that produced the results and this file."""
    lines = ["## Commands", "", "```bash", "bash benchmarks/peers/setup.sh"]
    for invocation in results.get("invocations", []):
        ran = invocation.get("ran")
        if ran == []:
            continue  # a --resume that found everything recorded
        done = "" if ran is None else f"; {describe_ran(ran)}"
        lines.append(f"{invocation['command']}")
        lines.append(f"#   started {invocation.get('started', '?')}{done}")
    lines += [report_command, "```", ""]
    lines.append(
        "Each training run is a subprocess of its tool's own Python "
        "(`benchmarks/peers/run_{ours,original,celltypist,lr}.py`), one at a time; the runner "
        "commands are recorded in the results JSON (`runs[*].command`)."
    )
    return lines


def load_note(results: dict) -> list[str]:
    """How much CPU other processes took while the tools ran (``other_cpu_share``)."""
    shares = [r.get("process", {}).get("other_cpu_share") for r in results["runs"].values()]
    for annotation in (results.get("annotation") or {}).values():
        shares += [t.get("other_cpu_share") for t in annotation["tools"].values()]
    shares = [s for s in shares if s is not None]
    if not shares:
        return []
    text = (
        "- CPU used by other processes while each tool ran, as a share of all cores: median "
        f"{np.median(shares):.0%}, max {max(shares):.0%}."
    )
    if max(shares) > OTHER_CPU_WARN:
        text += (
            " **Other work shared the machine during some runs**: their times are less certain "
            "(per run: `other_cpu_share` in the results JSON)."
        )
    return [text]


def settings_warning(results: dict) -> list[str]:
    """A warning when the results come from quick-test settings."""
    settings = results.get("settings", {})
    if not settings.get("epochs") and not settings.get("max_cells"):
        return []
    return [
        f"> **Quick-test settings** (epochs override {settings.get('epochs')}, at most "
        f"{settings.get('max_cells')} cells per condition): these numbers test the scripts and "
        "say nothing about the claims.",
        "",
    ]


def seeds_notes(frame: pd.DataFrame, results: dict, seeds: list[int]) -> list[str]:
    """Plain notes of rows with fewer runs than requested, and of failed runs."""
    notes = []
    seeded = frame[frame["seeded"]] if not frame.empty else frame
    for (task, tool, config), group in seeded.groupby(["task", "tool", "config"]):
        if len(group) < len(seeds):
            notes.append(
                f"- {TOOL_NAMES[tool]} `{config}` on {TASK_NAMES[task]}: **only {len(group)} of "
                f"the {len(seeds)} requested seeds ran**; its mean ± sd is over {len(group)}."
            )
    for record in failed_runs(results):
        error = record.get("error", "").strip().splitlines()[-1:] or ["?"]
        notes.append(
            f"- **Failed**: `{record['tool']}` `{record['config']}` on "
            f"{TASK_NAMES[record['task']]}, seed {record['seed']}: `{error[0][:200]}`"
        )
    return notes


INTRO = (
    "Every number below was measured by `benchmarks/compare.py` on the same data, on the same "
    "machine, in the same run(s), one tool at a time (see Commands). Kang 2018 PBMCs "
    "(`../shared/data`): train on the source condition (labeled), give the target condition to "
    "training unlabeled (scNym) or not at all (CellTypist, logistic regression), evaluate on the "
    "target cells. Derived labels (`shared/data/README.md`)."
)
ACCURACY_NOTE = (
    "scNym runs (ours and the original) are seeded identically (`random`, `numpy` and `torch` "
    "global seeds before each call; ours also gets `seed` in its config); so is CellTypist with "
    "feature selection (its first pass is SGD on numpy's global generator). CellTypist's default "
    "(lbfgs) and the logistic regression are deterministic and run once. Our all-genes model "
    "(`gene_selection='all'`, the like-for-like model for the time per epoch) runs once, with "
    "the first seed. mean ± sd over seeds "
    "(sd with ddof 0). `s / epoch`: median over epochs of the training pass (ours: "
    "`training_log.csv`; the original: its `train_epoch` timed by the runner); tools without "
    "epochs: –. Train peak RSS: the runner's own high-water mark (`VmHWM`) at the end of "
    "training. Predict cells/s: the target cells, in memory, after training (CellTypist with "
    "majority voting includes its over-clustering)."
)
EPOCH_NOTE = (
    "Same data, config, seeds and device (CPU). First ratio: medians of the per-epoch training "
    "pass (the target's measure); second: whole training wall time / epochs run (includes data "
    "preparation, validation and checkpoints)."
)


NOVELTY_NOTE = (
    "`python benchmarks/novelty.py --presets P --seeds S --out results/novelty_kang*.json`, "
    "one file per run of the script, all of them read here. For each type with at "
    "least 100 stim cells, its ctrl cells are removed from the labeled reference, a model is "
    "trained (stim cells unlabeled) and predicts the stim cells. AUROC: `obs['scNym_novelty']` "
    "(or 1 - confidence, on the same cells), left-out cells vs the known types' cells. Flagged: "
    "`obs['scNym_unknown']` at the model's own threshold (5 % of held-out reference cells). "
    "CellTypist 1.7.1: `benchmarks/peers/novelty_celltypist.py` (its default model, `mode='prob "
    "match'`, p 0.5; AUROC of 1 - its highest class probability; flagged = `Unassigned`). Known "
    "accuracy: the label is the best reference type whether flagged or not, so the score does "
    "not change it."
)


def targets_section(frame: pd.DataFrame, epoch_rows: list[dict], annotation) -> list[str]:
    """The claims, each met or missed with the measured ratio."""
    lines = ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    targets = accuracy_targets(frame) if not frame.empty else []
    for target, measured, result in targets + speed_targets(epoch_rows, annotation):
        lines.append(f"| {target} | {measured} | {result} |")
    return lines


def accuracy_section(frame: pd.DataFrame, results: dict, tasks: list[str]) -> list[str]:
    """Accuracy tables per task, with the runs per row and what is missing."""
    seeds = requested_seeds(results)
    lines = ["## Accuracy", "", f"Seeds requested: {', '.join(map(str, seeds))}. {ACCURACY_NOTE}"]
    notes = seeds_notes(frame, results, seeds)
    if notes:
        lines += ["", "Runs missing or failed:", "", *notes]
    for task in tasks:
        lines += ["", f"### {TASK_NAMES[task]}", "", *accuracy_table(frame, task, seeds)]
    return lines


def recall_section(frame: pd.DataFrame, tasks: list[str], out: Path, plot_dir: Path) -> list[str]:
    """Per-class recall tables per task; the ctrl -> stim plot, embedded."""
    lines = ["## Per-class recall", ""]
    for task in tasks:
        recall = recall_frame(frame, task)
        lines += [f"### {TASK_NAMES[task]}", "", *recall_table(recall), ""]
        png = plot_dir / f"per_class_recall_{task}.png"
        title = f"Per-class recall, Kang {TASK_NAMES[task]}: ours vs scNym 0.3.2"
        if task == TARGET_TASK and plot_recall(recall, png, title):
            lines += [f"![per-class recall, {TASK_NAMES[task]}]({os.path.relpath(png, out)})", ""]
    return lines


def build_report(results: dict, out: Path, plot_dir: Path, report_command: str) -> str:
    """The Markdown text of BENCHMARKS.md (to be written at ``out``); writes the plot."""
    frame = flatten(results)
    epoch_rows = epoch_time_rows(frame) if not frame.empty else []
    annotation = latest_annotation(results)
    tasks = [t for t in TASK_NAMES if not frame.empty and (frame["task"] == t).any()]
    lines = ["# Benchmarks: scNym (ours) against the original and the alternatives", ""]
    lines += [*settings_warning(results), INTRO, ""]
    lines += [*targets_section(frame, epoch_rows, annotation), ""]
    lines += [*machine_section(results), "", *commands_section(results, report_command), ""]
    lines += [*accuracy_section(frame, results, tasks), ""]
    lines += ["## Training time per epoch, ours / original", "", EPOCH_NOTE, ""]
    lines += [*(epoch_time_table(epoch_rows) if epoch_rows else ["(no paired runs)"]), ""]
    lines += [*recall_section(frame, tasks, out.parent, plot_dir)]
    lines += ["## Annotation throughput", "", *annotation_section(annotation), ""]
    lines += novelty_section(HERE / "results")
    return "\n".join(lines).rstrip() + "\n"


def annotation_section(annotation: dict | None) -> list[str]:
    """Text and table of the annotation benchmark."""
    if annotation is None:
        return ["(not run: `--annotate-cells 0`)"]
    return [
        f"{annotation['cells']:,} cells resampled from real Kang cells (`benchmarks/annotate.py` "
        "`build_store`: a zstd-compressed zarr store, and the same cells as an uncompressed "
        "`.h5ad` of raw counts), each tool end to end in its own process: read, normalise, "
        "predict, write. Ours: `scnym annotate INPUT --model ours_fp32.onnx --output "
        "results.zarr` from our base install (`benchmarks/peers/.venv-ours-base`: torch-free, no "
        "extras, as in production; streaming; fp32 export of our seed-0 ctrl → stim "
        "`no_new_identity` model; writes the results only), on the same `.h5ad` as the peers "
        "(the row `scNym (ours)`), on the zarr store, and with the same weights exported by "
        "`scnym export --input-mode log1p_cpm` (the reader then normalises the stored values "
        "before the block is made dense; the default `counts` export normalises inside the "
        "graph, over the dense block). The original: `scnym_api(task='predict')` with its "
        "seed-0 ctrl → stim `no_new_identity` model after `normalize_total(1e6)` + `log1p`, "
        "writing the whole annotated `.h5ad`. CellTypist: `celltypist.annotate` (defaults, no "
        "majority voting) with its default ctrl → stim model after log1p(CP10k), writing "
        "`to_adata()`. cells/s = cells / wall time of the whole process (interpreter start and "
        "imports included); peak RSS of that process (`os.wait4`, "
        "`benchmarks/peers/measure.py`). Each input was read once before each tool (warm page "
        f"cache). The tools took turns, {annotation.get('repeats', 1)} round(s); each figure is "
        "the median of a tool's runs. Accuracy: predicted vs the resampled "
        "cells' `cell_type` (ctrl and stim cells alike).",
        "",
        *annotation_table(annotation),
    ]


def novelty_section(folder: Path) -> list[str]:
    """The leave-one-type-out table of ``benchmarks/novelty.py`` (every ``novelty_kang*.json``)."""
    from novelty import table

    rows = [row for path in sorted(folder.glob("novelty_kang*.json"))
            for row in json.loads(path.read_text())]  # fmt: skip
    if not rows:
        return []
    peer_path = folder / "novelty_celltypist_ctrl.json"
    peer = json.loads(peer_path.read_text()) if peer_path.exists() else None
    return ["## Finding a type the reference lacks (Kang ctrl → stim, leave one type out)", "",
            NOVELTY_NOTE, "", table(rows, peer)]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--plot-dir", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if not args.results.exists():
        raise SystemExit(f"{args.results} not found: run benchmarks/compare.py first")
    results = json.loads(args.results.read_text())
    command = shlex.join(["python", *(sys.argv if argv is None else [__file__, *argv])])
    text = build_report(results, args.out.resolve(), args.plot_dir.resolve(), command)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

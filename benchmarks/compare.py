"""Side-by-side benchmark: our scNym against the original and the tools users pick instead.

Part 1, accuracy and training cost on the Kang 2018 tasks (``ctrl_to_stim``:
train on the control cells, the stimulated cells given unlabeled, evaluate on
them; ``stim_to_ctrl`` the reverse), for

- ``ours`` and ``original`` (scNym 0.3.2): ``no_new_identity`` and
  ``new_identity_discovery``, one run per seed, seeded identically;
- ``ours_supervised``: our ``no_ssl`` preset (supervised only), per seed;
- ``celltypist`` 1.7.1: default settings (deterministic: one run) and
  ``feature_selection=True`` (its first pass is SGD: one run per seed), each
  model annotating without and with majority voting;
- ``lr``: logistic regression on log1p(CP10k) of 2,000 HVGs (deterministic).

Each training run is a subprocess of its tool's own Python (``benchmarks/peers/
run_*.py``) that writes predictions and measurements; every metric is computed
here from the predictions by one function (``evaluate``).

Part 2, annotation throughput on a store of resampled Kang cells
(``annotate.build_store``; the same cells also as an ``.h5ad`` of raw counts):
``scnym annotate`` from our base install (torch-free, streaming, fp32 ONNX
export of our seed-0 ``ctrl_to_stim`` ``no_new_identity`` model) on the same
``.h5ad`` as the peers and on the zarr store, against the original's
``scnym_api(task='predict')`` and CellTypist's ``annotate``, each end to end
(read, normalise, predict, write) in its own process: cells/s and peak RSS.

Results are merged into ``--out`` by run key after every run; ``--resume``
skips runs already recorded. ``benchmarks/report.py`` writes BENCHMARKS.md.

Usage::

    bash benchmarks/peers/setup.sh
    python benchmarks/compare.py [--tasks ctrl_to_stim stim_to_ctrl] [--seeds 0 1 2]
        [--tools ours original celltypist lr ours_supervised] [--epochs N] [--max-cells N]
        [--annotate-cells 100000] [--annotate-repeats 3] [--workdir DIR] [--out benchmarks/results/compare.json]
        [--resume]
    python benchmarks/report.py --results benchmarks/results/compare.json --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
from kang import LABEL_KEYS, load_kang
from sklearn.metrics import accuracy_score, balanced_accuracy_score

logger = logging.getLogger("compare")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = HERE / "peers"
DEFAULT_OUT = HERE / "results" / "compare.json"
DEFAULT_WORKDIR = HERE / "results" / "work"

TASKS = {"ctrl_to_stim": "ctrl", "stim_to_ctrl": "stim"}
TOOLS = ("ours", "original", "celltypist", "lr", "ours_supervised", "ours_all_genes")
SCNYM_CONFIGS = ("no_new_identity", "new_identity_discovery")
CONFIGS = {
    "ours": SCNYM_CONFIGS,
    "original": SCNYM_CONFIGS,
    "ours_supervised": ("no_ssl",),
    # Ours reading every gene, as the original does (gene_selection='all'): the
    # like-for-like model for the time per epoch. Run once, with the first seed.
    "ours_all_genes": ("no_new_identity",),
    "celltypist": ("default", "feature_selection"),
    "lr": ("default",),
}
#: Tools whose model directories hold many checkpoints: removed after the run
#: unless the annotation part needs them.
SCNYM_TOOLS = ("ours", "original", "ours_supervised", "ours_all_genes")
#: (tool, config) pairs whose training draws random numbers: one run per seed.
#: The others are deterministic or measured once, and run with the first seed.
SEEDED = frozenset(
    {(tool, config) for tool in ("ours", "original", "ours_supervised") for config in CONFIGS[tool]}
    | {("celltypist", "feature_selection")}  # its SGD first pass draws from numpy's generator
)
UNLABELED = "Unlabeled"
#: The original hangs with fewer than 256 unlabeled cells (an empty ``drop_last`` loader)
#: and divides by zero with fewer than 317 labeled ones (spec §11): keep a margin.
MIN_CELLS_ORIGINAL = 400
COARSE = {"CD4 T": "T", "CD8 T": "T"}
#: The models the annotation part uses: task, config (and the first seed).
ANNOTATION_TASK, ANNOTATION_CONFIG, CELLTYPIST_CONFIG = "ctrl_to_stim", "no_new_identity", "default"
#: Each tool's interpreter and runner script.
VENVS = {
    "ours": Path(sys.executable),
    "ours_supervised": Path(sys.executable),
    "ours_all_genes": Path(sys.executable),
    "lr": Path(sys.executable),
    "original": PEERS / ".venv-scnym032" / "bin" / "python",
    "celltypist": PEERS / ".venv-celltypist" / "bin" / "python",
}
#: Our base install (no torch, no extras), which part 2 annotates with.
OURS_BASE = PEERS / ".venv-ours-base" / "bin" / "python"
RUNNERS = {
    "ours": "run_ours.py",
    "ours_supervised": "run_ours.py",
    "ours_all_genes": "run_ours.py",
    "lr": "run_lr.py",
    "original": "run_original.py",
    "celltypist": "run_celltypist.py",
}


@dataclass(frozen=True)
class Run:
    """One training run: a tool with one configuration on one task and seed."""

    tool: str
    config: str
    task: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}/{self.tool}/{self.config}/seed{self.seed}"

    @property
    def folder(self) -> str:
        return self.key.replace("/", "__")


# -- planning and inputs -----------------------------------------------------------------------


def plan_runs(tasks: list[str], tools: list[str], seeds: list[int]) -> list[Run]:
    """Every run of the benchmark: seeded tools once per seed, the others once.

    Within a task the seeded tools' runs of one seed follow each other (ours and
    the original with the same config and seed back to back), so that a change in
    the machine's load during the benchmark touches both sides alike.
    """
    pairs = [(tool, config) for tool in tools for config in CONFIGS[tool]]
    seeded = [pair for pair in pairs if pair in SEEDED]
    configs = dict.fromkeys(config for _, config in seeded)
    runs = []
    for task in tasks:
        for seed in seeds:
            for config in configs:
                runs += [Run(t, c, task, seed) for t, c in seeded if c == config]
        runs += [Run(t, c, task, seeds[0]) for t, c in pairs if (t, c) not in SEEDED]
    return runs


def subsample(adata: anndata.AnnData, max_cells: int | None, seed: int = 0) -> anndata.AnnData:
    """At most ``max_cells`` cells of each condition, drawn at random (fixed seed)."""
    if not max_cells:
        return adata
    rng = np.random.default_rng(seed)
    keep = []
    for condition in TASKS.values():
        rows = np.flatnonzero(adata.obs["condition"].to_numpy() == condition)
        keep.append(rows if len(rows) <= max_cells else rng.choice(rows, max_cells, replace=False))
    return adata[np.sort(np.concatenate(keep))].copy()


def task_data(kang: anndata.AnnData, task: str) -> anndata.AnnData:
    """Raw counts with ``obs['label']``: source cell types, ``'Unlabeled'`` for the target."""
    adata = anndata.AnnData(X=kang.X, obs=kang.obs[["condition", *LABEL_KEYS]].copy(), var=kang.var)
    labels = adata.obs["cell_type"].astype(str).to_numpy().copy()
    labels[adata.obs["condition"].to_numpy() != TASKS[task]] = UNLABELED
    adata.obs["label"] = labels
    return adata


def prepare_inputs(tasks: list[str], max_cells: int | None, workdir: Path) -> dict[str, Path]:
    """Write each task's ``.h5ad`` (raw counts, labels) into the workdir once."""
    size = f"max{max_cells}" if max_cells else "all"
    paths = {task: workdir / "inputs" / f"{task}_{size}.h5ad" for task in tasks}
    missing = [task for task, path in paths.items() if not path.exists()]
    if missing:
        kang = subsample(load_kang(), max_cells)
        for task in missing:
            paths[task].parent.mkdir(parents=True, exist_ok=True)
            task_data(kang, task).write_h5ad(paths[task])
    return paths


# -- running one tool --------------------------------------------------------------------------


def measured(command: list, workdir: Path, name: str, timeout: float | None) -> dict:
    """Run ``command`` under ``peers/measure.py``: wall seconds, peak RSS, exit code."""
    out = workdir / f"{name}.measure.json"
    wrapper = [sys.executable, str(PEERS / "measure.py"), "--json", str(out)]
    wrapper += ["--log", str(workdir / f"{name}.log")]
    if timeout:
        wrapper += ["--timeout", str(timeout)]
    # cwd: the workdir, never the repository, whose scnym.egg-info would shadow the
    # metadata of the peers' own scnym for `python -c` (cwd first on sys.path)
    proc = subprocess.Popen([*wrapper, "--", *map(str, command)], cwd=workdir)
    try:
        proc.wait()
    except BaseException:  # interrupted: the wrapper stops the command it runs
        proc.terminate()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{PEERS / 'measure.py'} failed (exit {proc.returncode})")
    return json.loads(out.read_text())


def runner_command(run: Run, data: Path, folder: Path, epochs: int | None) -> list:
    """The command line of ``run``'s runner, in its tool's Python."""
    command = [VENVS[run.tool], PEERS / RUNNERS[run.tool], "--data", data]
    command += ["--config", run.config, "--seed", run.seed, "--model-dir", folder / "model"]
    command += ["--predictions", folder / "predictions.csv"]
    command += ["--measurements", folder / "measurements.json"]
    if epochs and run.tool in SCNYM_TOOLS:
        command += ["--epochs", epochs]
    if run.tool == "ours_all_genes":
        command += ["--gene-selection", "all"]
    return command


def keep_model(run: Run, seeds: list[int]) -> bool:
    """Whether the annotation part needs this run's model directory."""
    if run.task != ANNOTATION_TASK or run.seed != seeds[0]:
        return False
    if run.tool in ("ours", "original"):
        return run.config == ANNOTATION_CONFIG
    return run.tool == "celltypist" and run.config == CELLTYPIST_CONFIG


def execute(run: Run, data: Path, workdir: Path, args: argparse.Namespace) -> dict:
    """Run one training run in its subprocess; its record with the metrics of each variant."""
    folder = workdir / "runs" / run.folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    command = runner_command(run, data, folder, args.epochs)
    process = measured(command, folder, "runner", args.timeout)
    record = {**asdict(run), "command": shlex.join(map(str, command)), "process": process}
    record["seeded"] = (run.tool, run.config) in SEEDED
    if process["returncode"] != 0 or not (folder / "measurements.json").exists():
        log = (folder / "runner.log").read_text(errors="replace")[-3000:]
        return {**record, "status": "failed", "error": log}
    measurements = json.loads((folder / "measurements.json").read_text())
    predictions = pd.read_csv(folder / "predictions.csv", index_col=0, dtype=str)
    record.update(status="ok", **training_summary(measurements))
    record["rows"] = variant_rows(predictions, measurements, read_obs(data))
    if run.tool in SCNYM_TOOLS and not keep_model(run, args.seeds) and not args.keep_models:
        shutil.rmtree(folder / "model", ignore_errors=True)
    return record


def training_summary(measurements: dict) -> dict:
    """Training time, time per epoch, epochs and peak RSS of a runner's measurements."""
    epochs, per_epoch = measurements.get("epochs"), measurements.get("epoch_seconds")
    train = measurements["train_seconds"]
    return {
        "epochs": epochs,
        "train_seconds": train,
        # median of the logged per-epoch seconds where there are any, else train time / epochs
        "seconds_per_epoch": float(np.median(per_epoch)) if per_epoch else _ratio(train, epochs),
        "train_seconds_per_epoch": _ratio(train, epochs),
        "train_peak_rss_mb": measurements["train_peak_rss_mb"],
        "versions": {**measurements.get("versions", {}), "python": measurements.get("python")},
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def variant_rows(predictions: pd.DataFrame, measurements: dict, obs: pd.DataFrame) -> list[dict]:
    """Metrics of each prediction column (a variant: e.g. with majority voting)."""
    obs = obs.loc[predictions.index]
    rows = []
    for variant in predictions.columns:
        seconds = measurements["predict_seconds"][variant]
        metrics = evaluate(obs["cell_type"], obs["cell_type_coarse"], predictions[variant])
        rows.append(
            {"config": variant, "predict_cells_per_s": len(predictions) / seconds, **metrics}
        )
    return rows


# -- evaluation (one function for every tool) --------------------------------------------------


def evaluate(cell_type, cell_type_coarse, predicted) -> dict:
    """Accuracy, balanced accuracy (fine and coarse labels) and per-class recall.

    Parameters
    ----------
    cell_type, cell_type_coarse
        True labels of the evaluated cells.
    predicted
        Predicted ``cell_type`` labels; for the coarse labels CD4 T and CD8 T
        predictions count as ``T``.

    Returns
    -------
    dict
        ``cell_type_acc``, ``cell_type_bacc``, ``cell_type_coarse_acc``,
        ``cell_type_coarse_bacc`` and ``recall`` (``cell_type`` -> recall).
    """
    fine = np.asarray(cell_type, dtype=str)
    coarse = np.asarray(cell_type_coarse, dtype=str)
    pred = np.asarray(predicted, dtype=str)
    pred_coarse = np.array([COARSE.get(p, p) for p in pred])
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # predicted classes absent from the truth
        for key, truth, p in (("cell_type", fine, pred), ("cell_type_coarse", coarse, pred_coarse)):
            out[f"{key}_acc"] = float(accuracy_score(truth, p))
            out[f"{key}_bacc"] = float(balanced_accuracy_score(truth, p))
    out["recall"] = {c: float(np.mean(pred[fine == c] == c)) for c in np.unique(fine)}
    return out


# -- results file ------------------------------------------------------------------------------


def load_results(path: Path, settings: dict) -> dict:
    """The results recorded so far at ``path`` (new ones when absent).

    Raises
    ------
    SystemExit
        When the file holds results of other settings (epochs, cells), which
        must not be mixed with these.
    """
    if not path.exists():
        return {"settings": settings, "invocations": [], "runs": {}, "annotation": {}}
    results = json.loads(path.read_text())
    if results.get("settings") != settings:
        raise SystemExit(
            f"{path} holds results of other settings ({results.get('settings')}, now {settings}); "
            "pass another --out, or remove it to start over"
        )
    return results


def save_results(results: dict, path: Path) -> None:
    """Write atomically (a temporary file renamed), so an interrupted write loses nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)


def machine_info() -> dict:
    """CPU model, cores and memory of this machine."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total_kb = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        memory_gb = round(total_kb / 1024**2, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "hostname": platform.node(),
    }


VERSION_PROBE = """
import json, platform
from importlib.metadata import version, PackageNotFoundError
out = {"python": platform.python_version()}
for name in ("scnym", "torch", "celltypist", "scikit-learn", "onnxruntime", "numpy", "anndata"):
    try:
        out[name] = version(name)
    except PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def tool_versions(workdir: Path) -> dict:
    """Python and package versions of each tool's interpreter (run in ``workdir``)."""
    found = {}
    for name in ("ours", "original", "celltypist"):
        python = VENVS[name]
        if not python.exists():
            found[name] = {"error": f"{python} missing: run bash benchmarks/peers/setup.sh"}
            continue
        probe = [str(python), "-c", VERSION_PROBE]
        done = subprocess.run(probe, capture_output=True, text=True, cwd=workdir)
        found[name] = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr}
    return found


# -- part 2: annotation throughput -------------------------------------------------------------


def annotation_inputs(workdir: Path, n_cells: int) -> tuple[Path, Path]:
    """The zarr store of ``n_cells`` resampled Kang cells and the same cells as ``.h5ad``."""
    from annotate import build_store

    folder = workdir / "annotate"
    folder.mkdir(parents=True, exist_ok=True)
    store, h5ad = folder / f"cells_{n_cells}.zarr", folder / f"cells_{n_cells}.h5ad"
    done = folder / f"cells_{n_cells}.done"
    if not done.exists():
        remove(store)
        logger.info("building %s and %s", store, h5ad)
        build_store(store, n_cells)
        anndata.read_zarr(store).write_h5ad(h5ad)
        done.touch()
    return store, h5ad


def remove(path: Path) -> None:
    """Remove a file or a folder, if there."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def warm_page_cache(path: Path) -> None:
    """Read every file under ``path`` once, so no tool pays for a cold disk."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as fh:
            while fh.read(1 << 24):
                pass


def read_obs(path: Path) -> pd.DataFrame:
    """``obs`` of an ``.h5ad`` file or a zarr store, without reading ``X``."""
    from anndata.io import read_elem

    if path.suffix == ".zarr":
        import zarr

        return read_elem(zarr.open_group(path, mode="r")["obs"])
    import h5py

    with h5py.File(path, "r") as fh:
        return read_elem(fh["obs"])


def read_obs_column(path: Path, key: str) -> np.ndarray:
    """``obs[key]`` of an annotated ``.h5ad`` or zarr store, as strings."""
    return read_obs(path)[key].astype(str).to_numpy()


def annotation_commands(folder: Path, store: Path, h5ad: Path, models: dict) -> dict:
    """Each tool's end-to-end annotation command, its input and where its labels land.

    Ours runs from the base install (``.venv-ours-base``: torch-free, no extras, as
    in production): on the same ``.h5ad`` the peers read, with the default export
    and with the ``log1p_cpm`` export, and on the zstd-compressed zarr store.
    """
    commands = {}
    ours = {"ours": ("ours", h5ad), "ours_log1p_cpm": ("ours_log1p_cpm", h5ad),
            "ours_zarr": ("ours", store)}  # fmt: skip
    for tool, (model, source) in ours.items():
        if model in models:
            out = folder / f"{tool}_annotated.zarr"
            command = [OURS_BASE, "-m", "scnym.cli", "annotate", source, "--model", models[model]]
            commands[tool] = (command + ["--output", out, "--quiet"], source, out, "scNym")
    if "original" in models:
        out = folder / "original_annotated.h5ad"
        command = [VENVS["original"], PEERS / "annotate_original.py", h5ad]
        command += ["--model-dir", models["original"], "--config", ANNOTATION_CONFIG]
        commands["original"] = (command + ["--output", out], h5ad, out, "scNym")
    if "celltypist" in models:
        out = folder / "celltypist_annotated.h5ad"
        command = [VENVS["celltypist"], PEERS / "annotate_celltypist.py", h5ad]
        command += ["--model", models["celltypist"], "--output", out]
        commands["celltypist"] = (command, h5ad, out, "predicted_labels")
    return commands


def annotation_models(workdir: Path, seed: int, folder: Path) -> dict:
    """The models the annotation part uses that exist.

    Ours is exported to fp32 ONNX twice: with the default ``counts`` input (the
    normalisation inside the graph) and with ``log1p_cpm`` input (the streaming
    reader normalises the stored values before the block is made dense).
    """
    runs = workdir / "runs"
    dirs = {
        tool: runs / Run(tool, ANNOTATION_CONFIG, ANNOTATION_TASK, seed).folder / "model"
        for tool in ("ours", "original")
    }
    celltypist = Run("celltypist", CELLTYPIST_CONFIG, ANNOTATION_TASK, seed).folder
    models = {}
    if (dirs["ours"] / "00_best_model_weights.pkl").exists():
        from scnym.export import export_model

        for tool, input_mode in (("ours", "counts"), ("ours_log1p_cpm", "log1p_cpm")):
            onnx = folder / f"{tool}_fp32.onnx"
            export_model(dirs["ours"], onnx, precision="fp32", input_mode=input_mode)
            models[tool] = onnx
    if (dirs["original"] / "00_best_model_weights.pkl").exists():
        models["original"] = dirs["original"]
    if (runs / celltypist / "model" / "model.pkl").exists():
        models["celltypist"] = runs / celltypist / "model" / "model.pkl"
    return models


def annotation_benchmark(
    workdir: Path, n_cells: int, seed: int, timeout: float | None, repeats: int
) -> dict:
    """Cells/s and peak RSS of each tool annotating ``n_cells`` cells end to end.

    The tools take turns, ``repeats`` rounds; each figure is the median of a
    tool's runs (the runs themselves are kept under ``runs``).
    """
    folder = workdir / "annotate"
    store, h5ad = annotation_inputs(workdir, n_cells)
    truth = read_obs_column(store, "cell_type")
    models = annotation_models(workdir, seed, folder)
    commands = annotation_commands(folder, store, h5ad, models)
    result = {
        "cells": n_cells,
        "repeats": repeats,
        "models": {k: str(v) for k, v in models.items()},
        "tools": {tool: {"command": shlex.join(map(str, c[0])), "runs": []} for tool, c in commands.items()},
    }  # fmt: skip
    for round_ in range(repeats):
        for tool, (command, source, out, key) in commands.items():
            entry = result["tools"][tool]
            if entry.get("status") == "failed":
                continue
            remove(out)
            warm_page_cache(source)
            logger.info("annotating %d cells with %s (round %d)", n_cells, tool, round_ + 1)
            process = measured(command, folder, f"{tool}_{n_cells}", timeout)
            entry["runs"].append(process)
            if process["returncode"] != 0:
                log = (folder / f"{tool}_{n_cells}.log").read_text(errors="replace")[-3000:]
                entry.update(status="failed", error=log)
                continue
            predicted = read_obs_column(out, key)
            runs = entry["runs"]
            entry.update(
                status="ok",
                wall_seconds=float(np.median([r["wall_seconds"] for r in runs])),
                peak_rss_mb=float(np.median([r["peak_rss_mb"] for r in runs])),
                other_cpu_share=max(r.get("other_cpu_share", 0.0) for r in runs),
                accuracy=float(np.mean(predicted == truth)),
            )
            entry["cells_per_s"] = n_cells / entry["wall_seconds"]
            logger.info(
                "%s: %.1f s, %.0f MB", tool, process["wall_seconds"], process["peak_rss_mb"]
            )
    return result


# -- driver ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the scNym presets' epochs (quick tests only)")  # fmt: skip
    parser.add_argument("--max-cells", type=int, default=None,
                        help="keep at most N cells of each condition (quick tests only)")  # fmt: skip
    parser.add_argument("--annotate-cells", type=int, default=100_000,
                        help="cells of the annotation throughput store; 0 skips part 2")  # fmt: skip
    parser.add_argument("--annotate-repeats", type=int, default=3,
                        help="rounds of part 2 (each tool's figures are medians)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    parser.add_argument("--resume", action="store_true", help="skip runs already recorded")
    parser.add_argument("--timeout", type=float, default=4 * 3600,
                        help="seconds after which one run is killed (recorded as failed)")  # fmt: skip
    parser.add_argument("--keep-models", action="store_true",
                        help="keep every scNym model directory (default: only those part 2 uses)")  # fmt: skip
    return parser.parse_args(argv)


def check_setup(args: argparse.Namespace) -> None:
    """Refuse to start when a peer's venv is missing or the cells are too few for it."""
    pythons = [VENVS[tool] for tool in args.tools] + ([OURS_BASE] if args.annotate_cells else [])
    for python in pythons:
        if not python.exists():
            raise SystemExit(f"{python} missing: run `bash benchmarks/peers/setup.sh` first")
    if "original" in args.tools and args.max_cells and args.max_cells < MIN_CELLS_ORIGINAL:
        raise SystemExit(
            f"--max-cells {args.max_cells}: the original scNym needs at least "
            f"{MIN_CELLS_ORIGINAL} cells of each condition (it hangs with fewer than 256 "
            "unlabeled cells); raise it or leave out --tools original"
        )


def run_part1(args: argparse.Namespace, results: dict) -> None:
    """Every planned training run not yet recorded (with ``--resume``)."""
    inputs = prepare_inputs(args.tasks, args.max_cells, args.workdir)
    for run in plan_runs(args.tasks, args.tools, args.seeds):
        done = results["runs"].get(run.key, {}).get("status") == "ok"
        if args.resume and done:
            logger.info("%s: recorded, skipped", run.key)
            continue
        logger.info("%s: running", run.key)
        record = execute(run, inputs[run.task], args.workdir, args)
        results["runs"][run.key] = record
        results["invocations"][-1]["ran"].append(run.key)
        save_results(results, args.out)
        logger.info("%s: %s", run.key, summary_line(record))


def summary_line(record: dict) -> str:
    """One line about a finished run, for the log."""
    if record["status"] != "ok":
        return "FAILED (see " + record["error"][-300:] + ")"
    parts = [f"{r['config']}: bacc {r['cell_type_bacc']:.3f}" for r in record["rows"]]
    return f"{'; '.join(parts)}; train {record['train_seconds']:.0f} s, epochs {record['epochs']}"


def run_part2(args: argparse.Namespace, results: dict) -> None:
    """Annotation throughput, unless skipped or recorded (with ``--resume``)."""
    if not args.annotate_cells:
        return
    key = str(args.annotate_cells)
    tools = results["annotation"].get(key, {}).get("tools", {})
    if args.resume and tools and all(t.get("status") == "ok" for t in tools.values()):
        logger.info("annotation of %s cells: recorded, skipped", key)
        return
    results["annotation"][key] = annotation_benchmark(
        args.workdir, args.annotate_cells, args.seeds[0], args.timeout, args.annotate_repeats
    )
    results["invocations"][-1]["ran"].append(f"annotation/{key}")
    save_results(results, args.out)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # `kill PID` ends the driver like Ctrl-C: the running tool is stopped, results kept
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    check_setup(args)
    args.workdir.mkdir(parents=True, exist_ok=True)
    settings = {"epochs": args.epochs, "max_cells": args.max_cells}
    results = load_results(args.out, settings)
    results["invocations"].append(
        {
            "command": shlex.join(["python", *sys.argv]),
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine_info(),
            "versions": tool_versions(args.workdir),
            "ran": [],
        }
    )
    save_results(results, args.out)
    run_part1(args, results)
    run_part2(args, results)
    logger.info("results in %s; BENCHMARKS.md: python benchmarks/report.py --results %s",
                args.out, args.out)  # fmt: skip


if __name__ == "__main__":
    main()

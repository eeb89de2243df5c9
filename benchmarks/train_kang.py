"""Kang 2018 ctrl -> stim: accuracy of scNym presets over seeds, with time per epoch.

Trains on the control cells (labeled), gives the stimulated cells to training
unlabeled, and evaluates on them. Prints accuracy and balanced accuracy on
``cell_type`` and ``cell_type_coarse`` (mean +- sd over seeds), seconds per
epoch, and the per-class recall of the stimulated cells.

Usage::

    python benchmarks/train_kang.py [--configs no_new_identity new_identity_discovery]
        [--seeds 0 1 2] [--source ctrl] [--out results/kang_train.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from kang import ctrl_to_stim, load_kang
from scnym.api import scnym_api
from sklearn.metrics import accuracy_score, balanced_accuracy_score

COARSE = {"CD4 T": "T", "CD8 T": "T"}


def evaluate(adata, target) -> dict:
    """Accuracy / balanced accuracy of ``obs['scNym']`` on the target cells."""
    pred = adata.obs["scNym"].astype(str).to_numpy()[target]
    out = {}
    for key in ("cell_type", "cell_type_coarse"):
        truth = adata.obs[key].astype(str).to_numpy()[target]
        p = pred if key == "cell_type" else np.array([COARSE.get(c, c) for c in pred])
        out[f"{key}_acc"] = accuracy_score(truth, p)
        out[f"{key}_bacc"] = balanced_accuracy_score(truth, p)
    truth = adata.obs["cell_type"].astype(str).to_numpy()[target]
    out["recall"] = {c: float(np.mean(pred[truth == c] == c)) for c in np.unique(truth)}
    return out


def run(adata, config: str, seed: int, source: str, overrides: dict) -> dict:
    data = ctrl_to_stim(adata, source=source)
    target = data.obs["condition"].to_numpy() != source
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        scnym_api(
            data,
            task="train",
            groupby="label",
            out_path=out,
            config={"preset": config, "seed": seed, **overrides},
        )
        train_seconds = time.perf_counter() - start
        log = pd.read_csv(Path(out) / "training_log.csv")
        scnym_api(data, task="predict", trained_model=out)
    result = evaluate(data, target)
    result.update(
        config=config,
        seed=seed,
        epochs=len(log),
        train_seconds=train_seconds,
        seconds_per_epoch=float(log["seconds"].median()),
    )
    return result


def summarize(results: list[dict]) -> None:
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "recall"} for r in results])
    metrics = ["cell_type_acc", "cell_type_bacc", "cell_type_coarse_acc", "cell_type_coarse_bacc"]
    print("\n| config | " + " | ".join(metrics) + " | epochs | s/epoch |")
    print("|---" * (len(metrics) + 3) + "|")
    for config, group in frame.groupby("config", sort=False):
        cells = [f"{group[m].mean():.3f} ± {group[m].std(ddof=0):.3f}" for m in metrics]
        print(
            f"| {config} | "
            + " | ".join(cells)
            + f" | {group['epochs'].mean():.0f} | {group['seconds_per_epoch'].median():.2f} |"
        )
    recall = pd.DataFrame({f"{r['config']}/s{r['seed']}": r["recall"] for r in results})
    print("\nPer-class recall on the target cells:")
    print(recall.round(3).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", nargs="+", default=["no_new_identity", "new_identity_discovery"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--source", default="ctrl", choices=["ctrl", "stim"])
    parser.add_argument("--override", default="{}", help="JSON dict of config overrides")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    adata = load_kang()
    results = []
    for config in args.configs:
        for seed in args.seeds:
            result = run(adata, config, seed, args.source, json.loads(args.override))
            print(
                f"{config} seed {seed}: acc {result['cell_type_acc']:.3f} "
                f"bacc {result['cell_type_bacc']:.3f} epochs {result['epochs']} "
                f"{result['seconds_per_epoch']:.2f} s/epoch",
                flush=True,
            )
            results.append(result)
    summarize(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

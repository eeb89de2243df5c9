"""Kang 2018 ctrl -> stim, leave one type out: does the novelty score find the missing type?

For every cell type with at least 100 stim cells, its ctrl cells are removed from
the labeled reference; scNym is trained (the preset asked for, stim cells given
unlabeled) and predicts the stim cells, writing ``obs['scNym_novelty']`` and the
flag ``obs['scNym_unknown']``. Per left-out type: AUROC of the novelty score
(left-out cells vs the known types' cells), the shares of left-out and of known
cells flagged, and the accuracy on the known types (the label is the best
reference type whatever the flag, so the score cannot change it). Side by side
on the same cells: 1 - softmax confidence (the signal before the score) and,
when ``--celltypist`` names the JSON written by
``benchmarks/peers/novelty_celltypist.py``, CellTypist's prob match.

Usage::

    python benchmarks/novelty.py [--presets new_identity_discovery no_new_identity]
        [--seeds 0 1 2] [--types B NK] [--epochs 100]
        [--overrides '{"ssl_kwargs": {"pseudolabel_min_confidence": 0.99}}']
        [--celltypist benchmarks/results/novelty_celltypist_ctrl.json]
        [--out benchmarks/results/novelty_kang.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

MIN_TARGET_CELLS = 100


def left_out_types(adata, target: str) -> list[str]:
    """Cell types with at least ``MIN_TARGET_CELLS`` cells in the target condition."""
    counts = adata.obs.loc[adata.obs["condition"] == target, "cell_type"].value_counts()
    return sorted(str(t) for t, n in counts.items() if n >= MIN_TARGET_CELLS)


def measure(
    adata, left_out: str, preset: str, seed: int, epochs: int, overrides: dict | None = None
) -> dict:
    """Train without ``left_out``'s ctrl cells; score the stim cells.

    ``overrides``: config values on top of the preset; the row's ``preset`` names them.
    """
    from kang import ctrl_to_stim
    from scnym.api import scnym_api
    from sklearn.metrics import roc_auc_score

    data = ctrl_to_stim(adata, source="ctrl")
    cell_type = data.obs["cell_type"].astype(str).to_numpy()
    reference = data.obs["condition"].to_numpy() == "ctrl"
    data = data[~(reference & (cell_type == left_out))].copy()
    target = data[data.obs["condition"].to_numpy() == "stim"].copy()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        config = {"preset": preset, "seed": seed, "n_epochs": epochs, **(overrides or {})}
        scnym_api(data, task="train", groupby="label", out_path=out, config=config)
        seconds = time.perf_counter() - start
        scnym_api(target, task="predict", trained_model=out, config=config)
    obs = target.obs
    novel = obs["cell_type"].astype(str).to_numpy() == left_out
    novelty = obs["scNym_novelty"].to_numpy(dtype=float)
    flagged = obs["scNym_unknown"].to_numpy(dtype=bool)
    correct = obs["scNym"].astype(str).to_numpy() == obs["cell_type"].astype(str).to_numpy()
    return {
        "left_out": left_out, "seed": seed,
        "preset": f"{preset} + {json.dumps(overrides)}" if overrides else preset,
        "n_left_out": int(novel.sum()), "n_known": int((~novel).sum()), "train_seconds": seconds,
        "auroc_novelty": float(roc_auc_score(novel, novelty)),
        "auroc_one_minus_confidence": float(
            roc_auc_score(novel, 1 - obs["scNym_confidence"].to_numpy(dtype=float))
        ),
        "left_out_flagged": float(flagged[novel].mean()),
        "known_flagged": float(flagged[~novel].mean()),
        "known_accuracy": float(correct[~novel].mean()),
        "left_out_called": obs.loc[novel, "scNym"].value_counts(normalize=True).head(2).round(3)
        .to_dict(),
    }  # fmt: skip


def table(rows: list[dict], celltypist: dict | None) -> str:
    """A markdown table: per left-out type, means over the runs of each preset."""
    peer = (celltypist or {}).get("per_type", {})
    lines = [
        "| preset | left out | runs | AUROC novelty | AUROC 1 - confidence | AUROC CellTypist "
        "prob match | left-out flagged | known flagged | CellTypist: left-out / known "
        "Unassigned | known accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset in dict.fromkeys(r["preset"] for r in rows):
        mine = [r for r in rows if r["preset"] == preset]
        for left_out in [*dict.fromkeys(r["left_out"] for r in mine), "mean"]:
            runs = mine if left_out == "mean" else [r for r in mine if r["left_out"] == left_out]
            types = sorted({r["left_out"] for r in runs})
            ct = [peer[t] for t in types if t in peer]

            def avg(key, runs=runs):
                return np.mean([r[key] for r in runs])

            ct_cells = (
                f"{np.mean([c['auroc'] for c in ct]):.3f}",
                f"{np.mean([c['novel_unassigned_share'] for c in ct]):.1%} / "
                f"{np.mean([c['known_unassigned_share'] for c in ct]):.1%}",
            ) if len(ct) == len(types) else ("–", "–")  # fmt: skip
            lines.append(
                f"| `{preset}` | {'**mean**' if left_out == 'mean' else left_out} | {len(runs)} | "
                f"{avg('auroc_novelty'):.3f} | {avg('auroc_one_minus_confidence'):.3f} | "
                f"{ct_cells[0]} | {avg('left_out_flagged'):.1%} | {avg('known_flagged'):.1%} | "
                f"{ct_cells[1]} | {avg('known_accuracy'):.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["new_identity_discovery"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--types", nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--celltypist", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--overrides", type=json.loads, default=None,
                        help="JSON config values on top of each preset")  # fmt: skip
    args = parser.parse_args()
    import torch
    from kang import load_kang

    torch.set_num_threads(2)
    adata = load_kang()
    types = args.types or left_out_types(adata, "stim")
    rows = []
    for preset in args.presets:
        for seed in args.seeds:
            for left_out in types:
                rows.append(measure(adata, left_out, preset, seed, args.epochs, args.overrides))
                print(json.dumps(rows[-1]), flush=True)
                if args.out:
                    args.out.write_text(json.dumps(rows, indent=1))
    celltypist = json.loads(args.celltypist.read_text()) if args.celltypist else None
    print(table(rows, celltypist))


if __name__ == "__main__":
    main()

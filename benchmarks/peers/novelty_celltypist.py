"""Leave-one-type-out novelty benchmark of CellTypist ('prob match') on the Kang data.

Runs in ``benchmarks/peers/.venv-celltypist`` (``setup.sh``). For each left-out
cell type T, CellTypist is trained (``celltypist.train``, ``--config`` as in
``run_celltypist.py``) on the cells of the ``--source`` condition minus the T
cells (labels: ``cell_type``), and annotates every cell of the other condition
with ``celltypist.annotate(mode='prob match', p_thres=0.5)`` (no majority
voting). A target cell is flagged as unknown when CellTypist calls it
``'Unassigned'`` (no class probability above ``p_thres``). Per left-out type it
records the share of T cells and of known (non-T) cells flagged, the AUROC of the
novelty score ``1 - max class probability`` (``probability_matrix``: the
one-vs-rest sigmoids) for T cells against the rest, and the accuracy on the
known target cells, both of the 'prob match' labels (``'Unassigned'`` and
multi-label calls count as wrong) and of the argmax label (as 'best match'
would call it). The per-cell scores go to ``{OUT stem}_scores.npz`` beside the
JSON: ``obs_names`` (the target cells), ``<T>__score``, ``<T>__is_novel`` and
``<T>__max_decision`` (the largest one-vs-rest decision value, free of the
sigmoid's saturation at 1.0). One JSON line is printed per type, then a summary.

Usage::

    nice -n 10 benchmarks/peers/.venv-celltypist/bin/python
        benchmarks/peers/novelty_celltypist.py --source ctrl --config default
        --out benchmarks/results/novelty_celltypist_ctrl.json [--types B "CD4 T"]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anndata
import numpy as np
import pandas as pd
from common import Stopwatch, python_info, seed_everything
from run_celltypist import CONFIGS, normalise, versions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kang import load_kang  # noqa: E402

if TYPE_CHECKING:
    from celltypist.models import Model

LABEL_KEY = "cell_type"
CONDITION_KEY = "condition"
MIN_TARGET_CELLS = 100
P_THRES = 0.5
UNASSIGNED = "Unassigned"


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="+", default=None, help="cell types to leave out")
    parser.add_argument("--source", default="ctrl", help="labeled condition")
    parser.add_argument("--config", default="default", choices=sorted(CONFIGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    return parser.parse_args()


def split_conditions(adata: anndata.AnnData, source: str) -> tuple[anndata.AnnData, ...]:
    """(source cells, target cells): the ``source`` condition and the other one."""
    condition = adata.obs[CONDITION_KEY].astype(str).to_numpy()
    if source not in set(condition) or len(set(condition)) != 2:
        raise ValueError(f"--source {source!r} not one of two conditions {sorted(set(condition))}")
    return adata[condition == source].copy(), adata[condition != source].copy()


def default_types(target: anndata.AnnData, min_cells: int = MIN_TARGET_CELLS) -> list[str]:
    """Cell types with at least ``min_cells`` target cells."""
    counts = target.obs[LABEL_KEY].astype(str).value_counts()
    return sorted(counts.index[counts >= min_cells])


def train_without(
    source: anndata.AnnData, left_out: str, config: str, seed: int
) -> tuple[Model, float]:
    """CellTypist model trained on the source cells not of type ``left_out``; and seconds."""
    import celltypist

    keep = source.obs[LABEL_KEY].astype(str).to_numpy() != left_out
    cells = source[keep].copy()
    seed_everything(seed)
    with Stopwatch() as clock:
        model = celltypist.train(cells, labels=LABEL_KEY, **CONFIGS[config])
    return model, clock.seconds


def annotate_prob_match(
    model: Model, target: anndata.AnnData
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame, float]:
    """(labels, probability matrix, decision matrix, seconds) of 'prob match' annotation."""
    import celltypist

    with Stopwatch() as clock:
        result = celltypist.annotate(target, model=model, mode="prob match", p_thres=P_THRES)
    labels = result.predicted_labels["predicted_labels"].to_numpy(dtype=str)
    return labels, result.probability_matrix, result.decision_matrix, clock.seconds


def auroc(is_novel: np.ndarray, score: np.ndarray) -> float:
    """AUROC of ``score`` for the novel cells against the rest."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_novel, score))


def top_shares(labels: np.ndarray, n: int = 3) -> dict[str, float]:
    """Shares of the ``n`` most frequent labels."""
    shares = pd.Series(labels).value_counts(normalize=True).head(n)
    return {str(k): round(float(v), 4) for k, v in shares.items()}


def novelty_metrics(
    truth: np.ndarray, is_novel: np.ndarray, labels: np.ndarray, arrays: dict[str, np.ndarray]
) -> dict:
    """Flagged shares, AUROCs of the novelty scores and accuracy on the known cells."""
    unassigned, known = labels == UNASSIGNED, ~is_novel
    multi = np.char.find(labels, "|") >= 0
    correct, argmax_correct = labels == truth, arrays["argmax"] == truth
    return {
        "n_novel": int(is_novel.sum()),
        "n_known": int(known.sum()),
        "novel_unassigned_share": float(unassigned[is_novel].mean()),
        "known_unassigned_share": float(unassigned[known].mean()),
        "known_multi_label_share": float(multi[known].mean()),
        "auroc": auroc(is_novel, arrays["score"]),
        "auroc_max_decision": auroc(is_novel, -arrays["max_decision"]),
        "known_accuracy_prob_match": float(correct[known].mean()),
        "known_accuracy_argmax": float(argmax_correct[known].mean()),
        "known_accuracy_assigned": float(correct[known & ~unassigned].mean()),
        "score_zero_share": float((arrays["score"] == 0).mean()),
        "novel_argmax_shares": top_shares(arrays["argmax"][is_novel]),
    }


def cell_arrays(probs: pd.DataFrame, decision: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per target cell: novelty score, largest decision value and argmax label."""
    p = probs.to_numpy()
    return {
        "score": 1.0 - p.max(axis=1),
        "max_decision": decision.to_numpy().max(axis=1),
        "argmax": probs.columns.to_numpy().astype(str)[p.argmax(axis=1)],
    }


def run_type(
    source: anndata.AnnData, target: anndata.AnnData, left_out: str, args: argparse.Namespace
) -> tuple[dict, dict]:
    """Metrics of one left-out type, and its per-cell arrays for the npz."""
    model, train_seconds = train_without(source, left_out, args.config, args.seed)
    labels, probs, decision, annotate_seconds = annotate_prob_match(model, target)
    truth = target.obs[LABEL_KEY].astype(str).to_numpy()
    is_novel = truth == left_out
    cells = cell_arrays(probs, decision)
    metrics = novelty_metrics(truth, is_novel, labels, cells)
    metrics |= {"n_features": int(len(model.features)), "train_seconds": train_seconds}
    metrics["annotate_seconds"] = annotate_seconds
    arrays = {
        f"{left_out}__score": cells["score"],
        f"{left_out}__is_novel": is_novel,
        f"{left_out}__max_decision": cells["max_decision"],
    }
    return metrics, arrays


def summarise(per_type: dict[str, dict]) -> dict:
    """Means over the left-out types of the scalar metrics."""
    keys = ["auroc", "auroc_max_decision", "novel_unassigned_share", "known_unassigned_share"]
    keys += ["known_accuracy_prob_match", "known_accuracy_argmax", "known_accuracy_assigned"]
    return {f"mean_{k}": float(np.mean([m[k] for m in per_type.values()])) for k in keys}


def main() -> None:
    args = parse_args()
    logging.getLogger("celltypist").setLevel(logging.WARNING)
    with Stopwatch() as total:
        source, target = split_conditions(normalise(load_kang()), args.source)
        types = args.types or default_types(target)
        missing = set(types) - set(source.obs[LABEL_KEY].astype(str))
        if missing:
            raise SystemExit(f"unknown cell types: {sorted(missing)}")
        per_type, arrays = {}, {"obs_names": target.obs_names.to_numpy().astype(str)}
        for left_out in types:
            per_type[left_out], cells = run_type(source, target, left_out, args)
            arrays |= cells
            print(json.dumps({"left_out": left_out, **per_type[left_out]}), flush=True)
    summary = {"types": types, **summarise(per_type), "total_seconds": total.seconds}
    print(json.dumps({"summary": summary}), flush=True)
    write(args, per_type, summary, arrays, target)


def write(
    args: argparse.Namespace, per_type: dict, summary: dict, arrays: dict, target: anndata.AnnData
) -> None:
    """Write the JSON of results and the npz of per-cell scores beside it."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    scores = args.out.with_name(f"{args.out.stem}_scores.npz")
    np.savez_compressed(scores, **arrays)
    (target_condition,) = set(target.obs[CONDITION_KEY].astype(str))
    result = {
        "tool": "celltypist",
        "mode": "prob match",
        "p_thres": P_THRES,
        "config": args.config,
        "seed": args.seed,
        "source": args.source,
        "target": target_condition,
        "per_type": per_type,
        "summary": summary,
        "scores_npz": scores.name,
        "versions": versions(),
        **python_info(),
    }
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

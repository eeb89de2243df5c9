"""Train CellTypist on the source cells of a prepared task and annotate its target cells.

Runs in ``benchmarks/peers/.venv-celltypist`` (``setup.sh``). CellTypist expects
log1p of counts scaled to 10,000 per cell (``sc.pp.normalize_total`` +
``sc.pp.log1p``, as its tutorial does). ``--config default`` trains with
CellTypist's defaults; ``--config feature_selection`` adds
``feature_selection=True`` (its other defaults kept). Each model annotates the
target cells twice: without and with majority voting (prediction columns
``CONFIG`` and ``CONFIG+majority_voting``). The model is written to
``MODEL_DIR/model.pkl``. CellTypist takes no seed: with its defaults (lbfgs) it
is deterministic, but ``feature_selection`` selects the genes with a first pass
of SGD, which draws from numpy's global generator: seeded with ``--seed`` (as
are Python's) before training.

Usage::

    benchmarks/peers/.venv-celltypist/bin/python benchmarks/peers/run_celltypist.py
        --data TASK.h5ad --config default --model-dir DIR --predictions PRED.csv
        --measurements MEAS.json
"""

from __future__ import annotations

from importlib.metadata import version

import anndata
import pandas as pd
from common import (
    Stopwatch,
    peak_rss_mb,
    seed_everything,
    split_source_target,
    train_parser,
    write_outputs,
)

CP10K = 1e4
CONFIGS = {"default": {}, "feature_selection": {"feature_selection": True}}
MAJORITY_VOTING = "+majority_voting"


def normalise(adata: anndata.AnnData) -> anndata.AnnData:
    """log1p(CP10k) of the raw counts, as CellTypist requires."""
    import scanpy as sc

    sc.pp.normalize_total(adata, target_sum=CP10K)
    sc.pp.log1p(adata)
    return adata


def annotate(model, target: anndata.AnnData, majority_voting: bool) -> tuple[pd.Series, float]:
    """Predicted labels of the target cells, and the seconds the annotation took."""
    import celltypist

    column = "majority_voting" if majority_voting else "predicted_labels"
    with Stopwatch() as clock:
        result = celltypist.annotate(target, model=model, majority_voting=majority_voting)
    return result.predicted_labels[column].astype(str), clock.seconds


def versions() -> dict:
    """Versions of the packages this runner's results depend on."""
    return {name: version(name) for name in ("celltypist", "scikit-learn", "scanpy", "numpy")}


def main() -> None:
    parser = train_parser(__doc__)
    args = parser.parse_args()
    if args.config not in CONFIGS:
        parser.error(f"--config must be one of {sorted(CONFIGS)}, not {args.config!r}")
    import celltypist

    source, target = split_source_target(normalise(anndata.read_h5ad(args.data)))
    seed_everything(args.seed)
    with Stopwatch() as train:
        model = celltypist.train(source, labels="label", **CONFIGS[args.config])
    rss = peak_rss_mb()
    args.model_dir.mkdir(parents=True, exist_ok=True)
    model.write(str(args.model_dir / "model.pkl"))
    predictions, seconds = {}, {}
    for majority_voting in (False, True):
        name = args.config + (MAJORITY_VOTING if majority_voting else "")
        predictions[name], seconds[name] = annotate(model, target, majority_voting)
    measurements = {
        "train_seconds": train.seconds,
        "epochs": None,
        "epoch_seconds": None,
        "train_peak_rss_mb": rss,
        "predict_seconds": seconds,
        "n_target": int(target.n_obs),
        "versions": versions(),
    }
    write_outputs(pd.DataFrame(predictions, index=target.obs_names), measurements, args)


if __name__ == "__main__":
    main()

"""Train our scNym on a prepared task and predict its target cells.

Runs in the project's Python. Our ``scnym_api`` takes the raw counts as they are
(it normalises to log1p(CPM) inside). Time per epoch comes from the model
directory's ``training_log.csv`` (column ``seconds``: the training pass of each
epoch).

Usage::

    python benchmarks/peers/run_ours.py --data TASK.h5ad --config no_new_identity --seed 0
        --model-dir DIR --predictions PRED.csv --measurements MEAS.json [--epochs N]
        [--gene-selection markers|all]
"""

from __future__ import annotations

import logging
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


def versions() -> dict:
    """Versions of the packages this runner's results depend on."""
    import torch

    return {"scnym": version("scnym"), "torch": torch.__version__}


def main() -> None:
    parser = train_parser(__doc__)
    parser.add_argument("--gene-selection", choices=("markers", "all"), default=None,
                        help="override the config's gene_selection")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from scnym.api import scnym_api

    adata = anndata.read_h5ad(args.data)
    config = {"preset": args.config, "seed": args.seed}
    if args.epochs:
        config["n_epochs"] = args.epochs
    if args.gene_selection:
        config["gene_selection"] = args.gene_selection
    seed_everything(args.seed)
    with Stopwatch() as train:
        scnym_api(adata, task="train", groupby="label", out_path=str(args.model_dir), config=config)
    rss = peak_rss_mb()
    log = pd.read_csv(args.model_dir / "training_log.csv")
    _, target = split_source_target(adata)
    with Stopwatch() as predict:
        scnym_api(target, task="predict", trained_model=str(args.model_dir))
    predictions = pd.DataFrame({args.config: target.obs["scNym"].astype(str)})
    measurements = {
        "train_seconds": train.seconds,
        "epochs": len(log),
        "epoch_seconds": log["seconds"].astype(float).tolist(),
        "train_peak_rss_mb": rss,
        "predict_seconds": {args.config: predict.seconds},
        "n_target": int(target.n_obs),
        "versions": versions(),
    }
    write_outputs(predictions, measurements, args)


if __name__ == "__main__":
    main()

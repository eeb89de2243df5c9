"""Logistic-regression baseline: log1p(CP10k) of 2,000 HVGs, no domain adaptation.

Runs in the project's Python (scikit-learn). As ``shared/data/README.md``
describes: the 2,000 genes of highest log1p(CP10k) variance among genes detected
in at least 1 % of cells (``kang.highly_variable_genes``), chosen on the labeled
source cells only, then scikit-learn's ``LogisticRegression`` (lbfgs, C=1,
``max_iter=1000``) on those genes. Deterministic: ``--seed`` is only recorded.

Usage::

    python benchmarks/peers/run_lr.py --data TASK.h5ad --config default --model-dir DIR
        --predictions PRED.csv --measurements MEAS.json
"""

from __future__ import annotations

import pickle
import sys
from importlib.metadata import version
from pathlib import Path

import anndata
import pandas as pd
from common import Stopwatch, lognorm, peak_rss_mb, split_source_target, train_parser, write_outputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kang import highly_variable_genes  # noqa: E402

CP10K = 1e4
N_HVG = 2000
MAX_ITER = 1000


def main() -> None:
    args = train_parser(__doc__).parse_args()
    from sklearn.linear_model import LogisticRegression

    source, target = split_source_target(anndata.read_h5ad(args.data))
    with Stopwatch() as train:
        genes = highly_variable_genes(source.X, N_HVG)
        X = lognorm(source.X, CP10K)[:, genes]
        model = LogisticRegression(max_iter=MAX_ITER).fit(X, source.obs["label"].astype(str))
    rss = peak_rss_mb()
    args.model_dir.mkdir(parents=True, exist_ok=True)
    with open(args.model_dir / "model.pkl", "wb") as fh:
        pickle.dump({"genes": source.var_names[genes].tolist(), "model": model}, fh)
    with Stopwatch() as predict:
        labels = model.predict(lognorm(target.X, CP10K)[:, genes])
    measurements = {
        "train_seconds": train.seconds,
        "epochs": None,
        "epoch_seconds": None,
        "train_peak_rss_mb": rss,
        "predict_seconds": {args.config: predict.seconds},
        "n_target": int(target.n_obs),
        "versions": {"scikit-learn": version("scikit-learn")},
    }
    write_outputs(pd.DataFrame({args.config: labels}, index=target.obs_names), measurements, args)


if __name__ == "__main__":
    main()

"""Train the original scNym 0.3.2 on a prepared task and predict its target cells.

Runs in ``benchmarks/peers/.venv-scnym032`` (``setup.sh``). The original needs
log1p(CPM) input (target sum 1e6, natural log; spec §3), so the counts are
normalised first, outside the timed training. It is unseeded, so Python's,
numpy's and torch's generators are seeded before the call. It logs no time per
epoch: each call of its trainers' ``train_epoch`` (the training pass of an
epoch, what our ``training_log.csv`` times) is timed by wrapping the method.
Epochs run are the ``val_epoch`` rows of its ``{basename(out_path)}_log.csv``.

Usage::

    benchmarks/peers/.venv-scnym032/bin/python benchmarks/peers/run_original.py
        --data TASK.h5ad --config no_new_identity --seed 0 --model-dir DIR
        --predictions PRED.csv --measurements MEAS.json [--epochs N]
"""

from __future__ import annotations

import copy
import functools
import time
from importlib.metadata import version

import anndata
import pandas as pd
from common import (
    Stopwatch,
    lognorm,
    peak_rss_mb,
    seed_everything,
    split_source_target,
    train_parser,
    write_outputs,
)

CPM = 1e6


def time_train_epochs(seconds: list[float]) -> None:
    """Append the duration of every ``train_epoch`` call of the original's trainers."""
    from scnym import trainer

    for cls in (trainer.Trainer, trainer.SemiSupervisedTrainer):
        method = cls.__dict__["train_epoch"]

        @functools.wraps(method)
        def timed(self, *args, _method=method, **kwargs):
            start = time.perf_counter()
            out = _method(self, *args, **kwargs)
            seconds.append(time.perf_counter() - start)
            return out

        cls.train_epoch = timed


def original_config(name: str, epochs: int | None):
    """The preset's name, or a full copy of it with ``n_epochs`` replaced.

    The original merges a dict shallowly into ``CONFIGS['default']``; a deep copy
    of the whole preset keeps every other value of the named preset.
    """
    if not epochs:
        return name
    from scnym.api import CONFIGS

    config = copy.deepcopy(CONFIGS[name])
    config["n_epochs"] = epochs
    return config


def epochs_logged(model_dir) -> int:
    """Number of ``val_epoch`` rows in the original's training log."""
    log = pd.read_csv(model_dir / f"{model_dir.name}_log.csv")
    return int((log["Mode"] == "val_epoch").sum())


def versions() -> dict:
    """Versions of the packages this runner's results depend on."""
    import torch

    return {"scnym": version("scnym"), "torch": torch.__version__, "numpy": version("numpy")}


def main() -> None:
    args = train_parser(__doc__).parse_args()
    from scnym.api import scnym_api

    adata = anndata.read_h5ad(args.data)
    adata.X = lognorm(adata.X, CPM)
    config = original_config(args.config, args.epochs)
    epoch_seconds: list[float] = []
    time_train_epochs(epoch_seconds)
    args.model_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    with Stopwatch() as train:
        scnym_api(adata, task="train", groupby="label", out_path=str(args.model_dir), config=config)
    rss = peak_rss_mb()
    _, target = split_source_target(adata)
    with Stopwatch() as predict:
        scnym_api(
            target,
            task="predict",
            trained_model=str(args.model_dir),
            out_path=str(args.model_dir),
            config=original_config(args.config, args.epochs),
        )
    predictions = pd.DataFrame({args.config: target.obs["scNym"].astype(str)})
    measurements = {
        "train_seconds": train.seconds,
        "epochs": epochs_logged(args.model_dir),
        "epoch_seconds": epoch_seconds,
        "train_peak_rss_mb": rss,
        "predict_seconds": {args.config: predict.seconds},
        "n_target": int(target.n_obs),
        "versions": versions(),
    }
    write_outputs(predictions, measurements, args)


if __name__ == "__main__":
    main()

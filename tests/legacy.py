"""A model directory in scNym 0.3.2's layout, built by hand from the spec's key layout."""

from __future__ import annotations

import os
import pickle

import numpy as np
import torch
from scnym.modeldir import RESULTS_FILE, WEIGHTS_FILE
from torch import nn


def _legacy_reference(n_genes: int, n_classes: int, seed: int = 0) -> nn.Sequential:
    """scNym 0.3.2's classifier: the hidden layer list-multiplied, so its weights are shared."""
    torch.manual_seed(seed)
    hidden = [nn.Linear(256, 256), nn.BatchNorm1d(256), nn.Dropout(0.5), nn.ReLU(inplace=True)]
    layers = [nn.Linear(n_genes, 256), nn.BatchNorm1d(256), nn.Dropout(0.5), nn.ReLU(inplace=True)]
    layers += hidden * 2 + [nn.Linear(256, n_classes)]
    seq = nn.Sequential(*layers)
    with torch.no_grad():  # non-trivial running statistics
        for module in seq.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return seq.eval()


def write_legacy_dir(path, genes, classes, seed=0) -> nn.Sequential:
    """Write a model directory with the key layout and pickle contents of scNym 0.3.2."""
    reference = _legacy_reference(len(genes), len(classes), seed)
    state = {f"classif.{k}": v for k, v in reference.state_dict().items()}
    assert "classif.8.weight" in state and "classif.12.weight" in state
    torch.save(state, path / WEIGHTS_FILE)
    results = {
        "model_path": os.path.realpath(path / WEIGHTS_FILE),
        "final_acc": np.float64(0.9),
        "final_loss": 0.3,
        "n_genes": len(genes),
        "n_cell_types": len(classes),
        "class_names": np.array(classes),
        "gene_names": list(genes),
        "model_kwargs": {"n_hidden": 256, "n_layers": 2, "init_dropout": 0.0, "residual": False},
        "traintest_idx": np.arange(10),
        "val_idx": np.arange(10, 12),
    }
    with open(path / RESULTS_FILE, "wb") as fh:
        pickle.dump(results, fh)
    return reference

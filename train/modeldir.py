"""Read and write scNym model directories, ours and the original 0.3.2's, safely.

A model directory holds:

- ``00_best_model_weights.pkl``: the classifier's state dict (``torch.save``),
  loadable with ``torch.load(weights_only=True)``;
- ``scnym_train_results.pkl``: the original's results dict, plain types only;
- ``scnym_model.json``: a human-readable manifest (genes, classes, model kwargs,
  preprocessing, metrics, versions) that the export step reads;
- ``scnym_novelty.npz``: the fitted novelty score (:mod:`scnym.novelty`), where
  training fitted one.

Directories written by scNym 0.3.2 have no manifest; one is derived from their
results pickle, read with an unpickler that only admits numpy arrays and plain
types (no arbitrary code runs).
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scnym.infer.preprocessing import TARGET_SUM

from .model import CellTypeCLF
from .novelty import NoveltyFit

WEIGHTS_FILE = "00_best_model_weights.pkl"
RESULTS_FILE = "scnym_train_results.pkl"
MANIFEST_FILE = "scnym_model.json"
#: Version of the manifest layout; bump on incompatible changes.
MANIFEST_FORMAT = 1

# (module, name) pairs the results unpickler may resolve: numpy's array and
# scalar reconstruction, nothing that can run code.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a results pickle (only numpy arrays "
            "and plain types are allowed)"
        )


def safe_load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` admitting only plain types and numpy arrays."""
    with open(path, "rb") as fh:
        return _SafeUnpickler(io.BytesIO(fh.read())).load()


def to_plain(value: Any) -> Any:
    """Convert numpy containers and scalars to plain Python types, recursively."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class ModelBundle:
    """A loaded classifier and the manifest that describes it."""

    model: CellTypeCLF
    manifest: dict[str, Any]
    path: Path

    @property
    def gene_names(self) -> list[str]:
        return self.manifest["gene_names"]

    @property
    def class_names(self) -> list[str]:
        return self.manifest["class_names"]

    @property
    def temperature(self) -> float:
        """The softmax temperature fitted on held-out cells (1 for uncalibrated models)."""
        return float(self.manifest.get("calibration", {}).get("temperature", 1.0))

    @cached_property
    def novelty(self) -> NoveltyFit | None:
        """The fitted novelty score (:mod:`scnym.novelty`), None for models trained without
        (read from disk once)."""
        return NoveltyFit.load(self.path)

    @property
    def confidence_threshold(self) -> float | None:
        """Confidence below which predictions are ``'Unknown'``: the calibrated threshold
        (:mod:`scnym.calibration`), else the config's pseudolabel threshold, else None."""
        threshold = self.manifest.get("confidence_threshold")
        if threshold is None:
            config = self.manifest.get("config", {})
            threshold = config.get("ssl_kwargs", {}).get("pseudolabel_min_confidence") or None
        return threshold


def write_model_dir(
    out_path: str | Path, results: dict[str, Any], manifest: dict[str, Any]
) -> None:
    """Write the results pickle and the JSON manifest (the weights are saved by training)."""
    out = Path(out_path)
    with open(out / RESULTS_FILE, "wb") as fh:
        pickle.dump(to_plain(results), fh)
    (out / MANIFEST_FILE).write_text(json.dumps(to_plain(manifest), indent=1) + "\n")


def _manifest_from_results(results: dict[str, Any]) -> dict[str, Any]:
    """Describe a 0.3.2 directory from its results dict."""
    for key in ("gene_names", "class_names"):
        if key not in results:
            raise ValueError(f"{RESULTS_FILE} lacks {key!r}; it is not a scNym results file")
    model_kwargs = dict(results.get("model_kwargs") or {})
    return {
        "format_version": MANIFEST_FORMAT,
        "producer": "scnym 0.3.2",
        "gene_names": [str(g) for g in results["gene_names"]],
        "class_names": [str(c) for c in results["class_names"]],
        "model_kwargs": model_kwargs,
        "preprocessing": {"input": "log1p_cpm", "target_sum": TARGET_SUM, "log_base": "e"},
        "metrics": {k: to_plain(results[k]) for k in ("final_acc", "final_loss") if k in results},
    }


def _fill_shared_hidden_layers(state: dict[str, torch.Tensor], model: CellTypeCLF) -> None:
    """Copy the first hidden layer's weights to the others where they are missing.

    scNym 0.3.2 shared one hidden layer ``n_layers`` times; its state dict may
    list only the first copy. Loading it into our unshared layers gives each
    layer the same weights, hence the same function.
    """
    expected = model.state_dict()
    first = 4  # index of the first hidden block in ``classif``
    block = len(model.classif[first:-1]) // max(model.n_layers, 1)
    for key in expected:
        if key in state or not key.startswith("classif."):
            continue
        index, _, rest = key[len("classif.") :].partition(".")
        if not first <= int(index) < len(model.classif) - 1:
            continue
        source = f"classif.{first + (int(index) - first) % block}.{rest}"
        if source in state:
            state[key] = state[source].clone()


def load_model_dir(path: str | Path, map_location: str | torch.device = "cpu") -> ModelBundle:
    """Load a model directory (ours or scNym 0.3.2's) into an eval-mode classifier.

    Raises
    ------
    FileNotFoundError
        If the directory or its weights are missing.
    ValueError
        If the files are incomplete or do not fit together.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Model directory {path} does not exist")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{path} holds no {WEIGHTS_FILE}: not a scNym model directory")
    if (path / MANIFEST_FILE).is_file():
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    elif (path / RESULTS_FILE).is_file():
        manifest = _manifest_from_results(safe_load_pickle(path / RESULTS_FILE))
    else:
        raise FileNotFoundError(
            f"{path} holds neither {MANIFEST_FILE} nor {RESULTS_FILE}: gene and class names unknown"
        )
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ValueError(f"Cannot read weights {weights}: {err}") from err
    model_kwargs = {
        k: v
        for k, v in manifest.get("model_kwargs", {}).items()
        if k
        in {"n_hidden", "n_layers", "init_dropout", "residual", "batch_norm", "track_running_stats"}
    }
    model = CellTypeCLF(
        n_genes=len(manifest["gene_names"]),
        n_cell_types=len(manifest["class_names"]),
        **model_kwargs,
    )
    _fill_shared_hidden_layers(state, model)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"Weights in {weights} do not match {len(manifest['gene_names'])} genes, "
            f"{len(manifest['class_names'])} classes and model_kwargs {model_kwargs}: {err}"
        ) from err
    model.eval()
    return ModelBundle(model=model, manifest=manifest, path=path)

#!/usr/bin/env bash
# The base install (no extras) must annotate without torch: build a model and a
# store with the full environment (.venv), then install the package alone into a
# fresh virtual environment and run `scnym annotate` there.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python - "$work" <<'PY'
import sys
from pathlib import Path

from scnym.api import scnym_api
from scnym.datasets import kang_pbmc_small
from scnym.export import export_model

work = Path(sys.argv[1])
adata = kang_pbmc_small()
adata.obs["label"] = adata.obs["cell_type"].astype(str).where(adata.obs["condition"] == "ctrl", "Unlabeled")
config = {"n_epochs": 2, "ssl_kwargs": {"min_epochs": 0}}
scnym_api(adata, task="train", groupby="label", out_path=str(work / "model"), config=config)
export_model(work / "model", work / "model.onnx")
adata[adata.obs["condition"] == "stim"].copy().write_zarr(work / "stim.zarr")
PY
python3 -m venv "$work/base"
"$work/base/bin/pip" install -q .
if "$work/base/bin/python" -c "import torch" 2>/dev/null; then
  echo "the base install pulled torch" >&2
  exit 1
fi
"$work/base/bin/scnym" annotate "$work/stim.zarr" --model "$work/model.onnx" --quiet
"$work/base/bin/python" -c "
import anndata, sys
a = anndata.read_zarr(sys.argv[1])
assert {'scNym', 'scNym_confidence'} <= set(a.obs.columns) and 'X_scnym' in a.obsm
print('base install: annotated', a.n_obs, 'cells without torch')
" "$work/stim.zarr"
# The shipped model travels inside the package: verified by checksum, used by name.
"$work/base/bin/scnym" models verify pretrained_human
"$work/base/bin/scnym" annotate "$work/stim.zarr" --model pretrained_human --output "$work/pretrained.csv" --quiet
"$work/base/bin/python" -c "
import pandas as pd, sys
frame = pd.read_csv(sys.argv[1], index_col=0)
assert len(frame) == 1000 and frame['scNym'].notna().all(), frame.head()
print('base install: pretrained_human annotated', len(frame), 'cells')
" "$work/pretrained.csv"
# Every non-training verb runs from the base install, with files and registry names.
"$work/base/bin/scnym" inspect pretrained_human > /dev/null
"$work/base/bin/python" -c "
import anndata, sys
anndata.read_zarr(sys.argv[1]).write_h5ad(sys.argv[2])
" "$work/stim.zarr" "$work/stim.h5ad"
"$work/base/bin/scnym" predict "$work/stim.h5ad" --model pretrained_human -o "$work/predicted.h5ad" > /dev/null
"$work/base/bin/scnym" predict "$work/stim.h5ad" --model "$work/model.onnx" -o "$work/predicted_onnx.h5ad" > /dev/null
echo "base install: inspect and predict ran without torch"

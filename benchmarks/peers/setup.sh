#!/usr/bin/env bash
# Set up the peer tools in their own virtual environments (outside the project's):
#   benchmarks/peers/.venv-scnym032  the original scNym 0.3.2 (its 2020 pins no longer
#                                    install; this recipe works with Python 3.11)
#   benchmarks/peers/.venv-celltypist CellTypist 1.7.1 (with scikit-learn < 1.8)
#   benchmarks/peers/.venv-ours-base  this project's base install (torch-free, no extras),
#                                    editable: what `scnym annotate` runs in in production
# Usage: bash benchmarks/peers/setup.sh   (idempotent; a venv that imports is kept)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"

if ! "$HERE/.venv-scnym032/bin/python" -c "import scnym, torch" 2>/dev/null; then
  "$PY" -m venv "$HERE/.venv-scnym032"
  V="$HERE/.venv-scnym032/bin/pip"
  "$V" install -q torch==2.14.1 torchvision==0.29.1
  "$V" install -q --no-deps scnym==0.3.2
  "$V" install -q anndata scanpy configargparse tensorboard pyyaml requests "numpy<2.4" psutil
fi
"$HERE/.venv-scnym032/bin/python" -c "import scnym, torch; print('scnym', scnym.__file__, 'torch', torch.__version__)"

# celltypist 1.7.1 passes LogisticRegression(multi_class='ovr'), which scikit-learn 1.8
# removed (TypeError in celltypist.train; Teichlab/celltypist#164): keep scikit-learn < 1.8.
CT_CHECK="import inspect, celltypist; from sklearn.linear_model import LogisticRegression as L
assert 'multi_class' in inspect.signature(L).parameters, 'scikit-learn >= 1.8'"
if ! "$HERE/.venv-celltypist/bin/python" -c "$CT_CHECK" 2>/dev/null; then
  [ -x "$HERE/.venv-celltypist/bin/python" ] || "$PY" -m venv "$HERE/.venv-celltypist"
  "$HERE/.venv-celltypist/bin/pip" install -q celltypist==1.7.1 "scikit-learn<1.8" psutil
fi
"$HERE/.venv-celltypist/bin/python" -c "import celltypist; print('celltypist', celltypist.__version__)"

# Our annotation runs from the base install, as in production (no torch, no dask).
if ! "$HERE/.venv-ours-base/bin/python" -c "import scnym.infer" 2>/dev/null; then
  "$PY" -m venv "$HERE/.venv-ours-base"
  "$HERE/.venv-ours-base/bin/pip" install -q -e "$HERE/../.."
fi
if "$HERE/.venv-ours-base/bin/python" -c "import torch" 2>/dev/null; then
  echo "the base install pulled torch" >&2
  exit 1
fi
"$HERE/.venv-ours-base/bin/python" -c "import scnym; print('scnym (base install)', scnym.__version__)"

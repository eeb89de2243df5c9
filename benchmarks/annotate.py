"""Annotation throughput and memory at scale: stores of resampled Kang cells.

Builds zarr stores of N cells by resampling real Kang cells (shared/data/README.md,
"Scale": a real cell's library size scaled by a lognormal factor (sigma 0.25),
counts drawn from Poisson(L * p), p = 0.7 x the cell's profile + 0.3 x its type's
mean profile), written block by block with anndata's ``CSRDataset.append``.
Then measures, each in its own process (peak RSS of that process):

- ``scnym annotate`` (torch-free, streaming) into an output zarr;
- the same model through torch on the in-memory matrix (``scnym_predict``);
- the machine's limits in the same run: the model's matrix products on random
  data at the same batch size (onnxruntime), and a pure read + decompress pass
  over the store.

``--soma`` also annotates the same cells from a TileDB-SOMA Experiment (Census
layout) written from the store. ``--baseline DIR`` also runs another build of scnym (``pip install --no-deps
--target DIR CHECKOUT``, put first on ``PYTHONPATH``) on the same store and model,
taking turns with ours over ``--repeats`` rounds (medians), so that a change is
compared with the code before it in one run.

Usage::

    python benchmarks/annotate.py --model-dir DIR --cells 100000 1000000 [--workdir W]
        [--baseline DIR --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import zarr
from anndata.io import sparse_dataset, write_elem
from kang import load_kang
from scipy import sparse
from scnym.infer.store import DEFAULT_BLOCK_ROWS

BLOCK = 5000


def build_store(path: Path, n_cells: int, seed: int = 0) -> None:
    """Write ``n_cells`` resampled Kang cells to a zarr store, block by block."""
    kang = load_kang()
    X = sparse.csr_matrix(kang.X, dtype=np.float32)
    lib = np.asarray(X.sum(axis=1)).ravel()
    profiles = sparse.diags(1.0 / lib) @ X
    types = kang.obs["cell_type"].astype(str).to_numpy()
    names, type_code = np.unique(types, return_inverse=True)
    means = np.vstack(
        [np.asarray(profiles[type_code == t].mean(axis=0)).ravel() for t in range(len(names))]
    )
    rng = np.random.default_rng(seed)
    group = zarr.open_group(path, mode="w")
    obs_parts = []
    for start in range(0, n_cells, BLOCK):
        n = min(BLOCK, n_cells - start)
        pick = rng.integers(0, kang.n_obs, n)
        p = 0.7 * profiles[pick].toarray() + 0.3 * means[type_code[pick]]
        depth = lib[pick] * rng.lognormal(0.0, 0.25, n)
        counts = sparse.csr_matrix(rng.poisson(p * depth[:, None]).astype(np.float32))
        if start == 0:
            write_elem(group, "X", counts, dataset_kwargs={"chunks": (200_000,)})
        else:
            sparse_dataset(group["X"]).append(counts)
        obs_parts.append(
            pd.DataFrame(
                {"cell_type": types[pick], "condition": kang.obs["condition"].to_numpy()[pick]},
                index=[f"cell_{i}" for i in range(start, start + n)],
            )
        )
    obs = pd.concat(obs_parts)
    obs["cell_type"] = obs["cell_type"].astype("category")
    obs["condition"] = obs["condition"].astype("category")
    write_elem(group, "obs", obs)
    write_elem(group, "var", pd.DataFrame(index=kang.var_names))
    for key in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
        group.create_group(key)
    group.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    zarr.consolidate_metadata(path)


def build_soma(store: Path, uri: Path) -> str:
    """The cells of ``store`` as a SOMA Experiment in the Census layout (RNA, layer raw)."""
    if not uri.exists():
        import tiledbsoma.io

        start = time.perf_counter()
        adata = anndata.read_zarr(store)
        adata.obs.index.name = adata.var.index.name = None  # written as obs_id / var_id
        tiledbsoma.io.from_anndata(str(uri), adata, measurement_name="RNA", X_layer_name="raw")
        print(f"built {uri} in {time.perf_counter() - start:.0f} s", flush=True)
    return str(uri)


def measure(code: str, pythonpath: Path | None = None) -> dict:
    """Run ``code`` (which sets ``result``) in a fresh Python; adds that process's peak RSS.

    ``pythonpath`` is put first on ``PYTHONPATH`` (another build of scnym).
    """
    tail = (
        "\nimport json, re\n"
        # VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited at fork)
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "result['peak_rss_mb'] = int(hwm) / 1024\n"
        "print(json.dumps(result))\n"
    )
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", code + tail], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict]) -> dict:
    """Median cells/s and peak RSS of several runs, with the runs themselves."""
    return {
        "cells_per_s": statistics.median(r["cells_per_s"] for r in runs),
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        "runs": runs,
    }


OURS = """
import time
from scnym.infer import annotate
t = time.perf_counter()
r = annotate({store!r}, {model!r}, output={out!r}, batch_size={batch}, progress=False)
result = {{"cells_per_s": r.n_cells / (time.perf_counter() - t)}}
"""

TORCH = """
import time, anndata
from scnym.api import scnym_api
t = time.perf_counter()
a = anndata.read_zarr({store!r})
scnym_api(a, task="predict", trained_model={model_dir!r})
result = {{"cells_per_s": a.n_obs / (time.perf_counter() - t)}}
"""

COMPUTE = """
import time, numpy as np
from scnym.infer import OnnxModel
m = OnnxModel({model!r})
x = np.random.default_rng(0).poisson(0.05, ({batch}, len(m.genes))).astype(np.float32)
m.run(x)
t = time.perf_counter(); n = 0
while time.perf_counter() - t < 20:
    m.run(x); n += len(x)
result = {{"cells_per_s": n / (time.perf_counter() - t)}}
"""

READ = """
import time
from scnym.infer.store import open_store, block_bounds
r = open_store({store!r}, writable=False)
t = time.perf_counter()
for a, b in block_bounds(r.n_obs, {batch}):
    r.read_rows(a, b)
result = {{"cells_per_s": r.n_obs / (time.perf_counter() - t)}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="trained model directory")
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=DEFAULT_BLOCK_ROWS,
                        help="rows per block (default: scnym annotate's)")  # fmt: skip
    parser.add_argument("--torch-max-cells", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="folder holding another scnym build to compare with")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="rounds of ours (and baseline)")
    parser.add_argument("--soma", action="store_true",
                        help="also annotate the same cells from a TileDB-SOMA Experiment")  # fmt: skip
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="scnym_annotate_"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model.onnx"
    if not model.exists():
        from scnym.export import export_model

        export_model(args.model_dir, model)
    rows = []
    for n in args.cells:
        store = work / f"kang_{n}.zarr"
        if not store.exists():
            start = time.perf_counter()
            build_store(store, n)
            print(f"built {store} in {time.perf_counter() - start:.0f} s", flush=True)
        fmt = {"store": str(store), "model": str(model), "batch": args.batch,
               "model_dir": str(args.model_dir)}  # fmt: skip
        row = {"cells": n}
        out = work / f"out_{n}.zarr"
        # (name, source, PYTHONPATH of the build): taking turns, round after round
        contenders = [("ours", str(store), None)]
        if args.baseline is not None:
            contenders.append(("baseline", str(store), args.baseline))
        if args.soma:
            contenders.append(("soma", build_soma(store, work / f"kang_{n}.soma"), None))
        runs = {name: [] for name, _, _ in contenders}
        for _ in range(args.repeats):
            for name, source, path in contenders:
                subprocess.run(["rm", "-rf", str(out), f"{out}.scnym-partial"], check=True)
                code = OURS.format(out=str(out), **{**fmt, "store": source})
                runs[name].append(measure(code, pythonpath=path))
        for name in runs:
            row[name] = median_run(runs[name])
        row["read"] = measure(READ.format(**fmt))
        row["compute"] = measure(COMPUTE.format(**fmt))
        if n <= args.torch_max_cells:
            row["torch"] = measure(TORCH.format(**fmt))
        rows.append(row)
        print(json.dumps(row), flush=True)
        anndata.read_zarr(out)  # the results are readable
    print("\n| cells | ours cells/s | ours peak RSS (MB) | read limit cells/s | compute limit cells/s "
          "| ours / lower limit | torch in-memory cells/s | torch peak RSS (MB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        limit = min(row["read"]["cells_per_s"], row["compute"]["cells_per_s"])
        torch_row = row.get("torch", {})
        print(
            f"| {row['cells']:,} | {row['ours']['cells_per_s']:,.0f} | {row['ours']['peak_rss_mb']:,.0f} "
            f"| {row['read']['cells_per_s']:,.0f} | {row['compute']['cells_per_s']:,.0f} "
            f"| {row['ours']['cells_per_s'] / limit:.2f} "
            f"| {torch_row.get('cells_per_s', float('nan')):,.0f} "
            f"| {torch_row.get('peak_rss_mb', float('nan')):,.0f} |"
        )
    labels = {"baseline": "the baseline build, same store", "soma": "ours from TileDB-SOMA"}
    for row in rows:
        ours = row["ours"]
        for name in ("baseline", "soma"):
            if name in row:
                other = row[name]
                print(
                    f"\n{row['cells']:,} cells, medians of {args.repeats}: ours "
                    f"{ours['cells_per_s']:,.0f} cells/s, {ours['peak_rss_mb']:,.0f} MB; "
                    f"{labels[name]} {other['cells_per_s']:,.0f} cells/s, "
                    f"{other['peak_rss_mb']:,.0f} MB; ratio "
                    f"{ours['cells_per_s'] / other['cells_per_s']:.3f}"
                )
    if len(rows) >= 2:
        ratio = rows[-1]["ours"]["peak_rss_mb"] / rows[0]["ours"]["peak_rss_mb"]
        print(f"\npeak RSS {rows[-1]['cells']:,} / {rows[0]['cells']:,} cells: {ratio:.2f}")


if __name__ == "__main__":
    main()

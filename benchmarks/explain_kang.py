"""Kang 2018: do the genes that made the model call each type include its textbook markers?

For each direction (ctrl -> stim, stim -> ctrl) a model is trained (or read with
``--model-dirs``) on the labelled condition with the other given unlabelled;
then the cells of the other condition, grouped by their ``cell_type``, are
explained with each method (``scnym.interpret.rank_genes``, 100 cells per group)
and, with ``--onnx``, by the finite-difference saliency of the exported model.
Prints, for B, NK, CD14 Mono and CD16 Mono, the top 10 genes and how many of
their textbook markers are among them, and the wall time of each explanation.

Usage::

    python benchmarks/explain_kang.py [--epochs 30] [--threads 2] [--onnx]
        [--sources ctrl stim] [--model-dirs CTRL_DIR STIM_DIR] [--save-models DIR]
        [--out results/explain_kang.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from kang import ctrl_to_stim, load_kang
from scnym.api import scnym_api
from scnym.explain import METHODS
from scnym.interpret import rank_genes

#: Textbook markers of the four types checked (shared/data/README.md, PanglaoDB, Azimuth PBMC).
MARKERS = {
    "B": ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1", "CD74", "HLA-DRA", "IGHM", "TCL1A", "CD22"],
    "NK": ["GNLY", "NKG7", "GZMB", "PRF1", "KLRD1", "KLRF1", "GZMA", "CST7", "FCGR3A", "CTSW"],
    "CD14 Mono": ["CD14", "LYZ", "S100A8", "S100A9", "FCN1", "VCAN", "CST3", "S100A12", "CSF3R",
                  "LGALS2"],
    "CD16 Mono": ["FCGR3A", "MS4A7", "LST1", "AIF1", "CDKN1C", "IFITM2", "RHOC", "FCER1G",
                  "SERPINA1", "TCF7L2"],
}  # fmt: skip
#: Markers a type's top 10 must hold at least (the acceptance criterion).
MIN_MARKERS = 2
TOP = 10


def train(adata, source: str, out: Path, epochs: int, seed: int) -> float:
    """Train on the ``source`` condition (the other unlabelled); return the seconds taken."""
    data = ctrl_to_stim(adata, source=source)
    start = time.perf_counter()
    config = {"preset": "new_identity_discovery", "n_epochs": epochs, "seed": seed}
    scnym_api(data, task="train", groupby="label", out_path=str(out), config=config)
    return time.perf_counter() - start


def explain(query, model, method: str, cells_per_group: int) -> dict:
    """Top genes of the checked types, their markers, and the wall time of one explanation."""
    start = time.perf_counter()
    table = rank_genes(query, model, "cell_type", method=method, n_genes=TOP,
                       cells_per_group=cells_per_group, progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "n_groups": int(table["group"].nunique()), "types": {}}
    for cell_type, markers in MARKERS.items():
        top = table[table["group"] == cell_type].sort_values("rank")["gene"].tolist()
        found = [gene for gene in top if gene in markers]
        result["types"][cell_type] = {
            "top": top,
            "markers": found,
            "passed": len(found) >= MIN_MARKERS,
        }
    params = query.uns["scNym_rank_genes"]["params"]
    result["n_incomplete"] = params.get("n_incomplete")
    return result


def report(direction: str, method: str, result: dict) -> None:
    counts = ", ".join(f"{t} {len(r['markers'])}" for t, r in result["types"].items())
    status = "pass" if all(r["passed"] for r in result["types"].values()) else "FAIL"
    extra = (
        "" if result["n_incomplete"] is None else f", incomplete IG cells {result['n_incomplete']}"
    )
    print(f"\n{direction} {method}: markers in top {TOP}: {counts} [{status}]; "
          f"{result['seconds']:.1f} s for {result['n_groups']} groups{extra}")  # fmt: skip
    for cell_type, r in result["types"].items():
        print(f"  {cell_type:10s} {' '.join(r['top'])}  (markers: {', '.join(r['markers'])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cells-per-group", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--sources", nargs="+", default=["ctrl", "stim"], choices=["ctrl", "stim"],
                        help="labelled condition of each direction run")  # fmt: skip
    parser.add_argument("--onnx", action="store_true", help="also the ONNX finite differences")
    parser.add_argument("--model-dirs", nargs="+", default=None,
                        help="trained model directories, one for each of --sources")  # fmt: skip
    parser.add_argument("--save-models", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    adata = load_kang()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, source in enumerate(args.sources):
            target = "stim" if source == "ctrl" else "ctrl"
            direction = f"{source} -> {target}"
            model = (
                Path(args.model_dirs[i])
                if args.model_dirs
                else (args.save_models or Path(tmp)) / source
            )
            if not args.model_dirs:
                seconds = train(adata, source, model, args.epochs, args.seed)
                print(f"{direction}: trained {args.epochs} epochs in {seconds:.0f} s", flush=True)
            query = adata[adata.obs["condition"].to_numpy() == target].copy()
            runs = {m: model for m in args.methods}
            if args.onnx:
                from scnym.export import export_model

                export_model(model, Path(tmp) / f"{source}.onnx")
                runs["saliency (ONNX, finite differences)"] = Path(tmp) / f"{source}.onnx"
            for method, path in runs.items():
                name = "saliency" if "ONNX" in method else method
                result = explain(query, str(path), name, args.cells_per_group)
                report(direction, method, result)
                results[f"{direction} / {method}"] = result
    passed = all(r["passed"] for res in results.values() for r in res["types"].values())
    print(f"\nAll types of all runs hold >= {MIN_MARKERS} markers in their top {TOP}: {passed}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

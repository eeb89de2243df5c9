"""Export a Kang-trained model to fp32 / fp16 / int8 ONNX and measure each.

Prints file size, agreement with torch (fp32) and with fp32 (fp16, int8) on all
7,451 stimulated cells, and cells/s of onnxruntime vs torch eval on the same
in-memory batch (threads as the machine gives, 2 cores here).

Usage::

    python benchmarks/export_kang.py [--model DIR] [--epochs N]

Without ``--model`` a model is trained first (ctrl labeled, stim unlabeled,
``no_new_identity``, seed 0).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from kang import ctrl_to_stim, load_kang
from scnym.api import scnym_api
from scnym.export import export_model
from scnym.export.exporter import check_data_from_adata
from scnym.modeldir import load_model_dir


def cells_per_s(run, n: int, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return n / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    adata = load_kang()
    stim = adata[adata.obs["condition"] == "stim"].copy()
    work = Path(tempfile.mkdtemp(prefix="scnym_export_"))
    model_dir = args.model
    if model_dir is None or not (model_dir / "00_best_model_weights.pkl").exists():
        model_dir = model_dir or work / "model"
        config = {"preset": "no_new_identity", "seed": 0}
        if args.epochs:
            config["n_epochs"] = args.epochs
        data = ctrl_to_stim(adata)
        scnym_api(data, task="train", groupby="label", out_path=str(model_dir), config=config)

    # Training may have run with fewer threads (OMP_NUM_THREADS); measure with all cores.
    torch.set_num_threads(os.cpu_count() or 1)
    bundle = load_model_dir(model_dir)
    check = check_data_from_adata(bundle, stim, "Kang stim")
    feeds = check.feeds("counts")
    print(f"model {model_dir}; check cells: {len(check.counts)} stimulated cells")
    print(
        "| precision | size (MB) | agreement with torch | agreement with fp32 | onnxruntime cells/s |"
    )
    print("|---|---|---|---|---|")
    reference = None
    for precision in ("fp32", "fp16", "int8"):
        path = work / f"kang_{precision}.onnx"
        report = export_model(model_dir, path, precision=precision, check=stim, force=True)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        pred = session.run(["predicted_class"], feeds)[0]
        if reference is None:
            reference = pred
        speed = cells_per_s(lambda s=session: s.run(None, feeds), len(pred))
        agreement_torch = report.argmax_agreement_torch if precision == "fp32" else float("nan")
        print(
            f"| {precision} | {report.size_bytes / 1e6:.2f} | {agreement_torch:.4f} | "
            f"{np.mean(pred == reference):.4f} | {speed:,.0f} |"
        )
    from scnym.export import ScnymGraph

    graph = ScnymGraph(bundle.model, "counts", 1e6)
    tensors = [torch.from_numpy(v) for v in feeds.values()]
    with torch.no_grad():
        torch_speed = cells_per_s(lambda: graph(*tensors), len(reference))
    print(
        f"torch eval, same batch: {torch_speed:,.0f} cells/s (threads: {torch.get_num_threads()})"
    )


if __name__ == "__main__":
    main()

"""Kang 2018, both directions: do the confidences mean what they say, before and after calibration?

Trains on one condition (labeled), the other given unlabeled, and on the target
cells measures: accuracy; mean confidence; expected calibration error (ECE) with
the raw softmax (temperature 1) and with the temperature fitted on held-out
reference cells; and the share of target cells (and of correctly typed ones)
marked Unknown by the old fixed threshold (0.9) and by the threshold calibration
chose on held-out reference cells (5 % of them flagged).

Usage::

    python benchmarks/calibration_kang.py [--config new_identity_discovery] [--seed 0]
        [--epochs 100] [--out results/calibration_kang.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from kang import ctrl_to_stim, load_kang
from scipy.special import softmax
from scnym.api import scnym_api
from scnym.calibration import expected_calibration_error
from scnym.infer.memory import model_inputs
from scnym.modeldir import load_model_dir
from scnym.prediction import model_outputs

OLD_THRESHOLD = 0.9


def measure(adata, source: str, config: str, seed: int, epochs: int) -> dict:
    data = ctrl_to_stim(adata, source=source)
    target = data.obs["condition"].to_numpy() != source
    with tempfile.TemporaryDirectory() as out:
        overrides = {"preset": config, "seed": seed, "n_epochs": epochs}
        scnym_api(data, task="train", groupby="label", out_path=out, config=overrides)
        bundle = load_model_dir(out)
        X, _ = model_inputs(data[target], bundle.gene_names)
        logits, _ = model_outputs(bundle.model, X)
    truth = data.obs["cell_type"].astype(str).to_numpy()[target]
    labels = np.array(
        [bundle.class_names.index(t) if t in bundle.class_names else -1 for t in truth]
    )
    known = labels >= 0
    row = {"source": source, "config": config, "seed": seed, "n_target": int(target.sum()),
           "calibration": bundle.manifest["calibration"]}  # fmt: skip
    for name, temperature, threshold in (
        ("raw", 1.0, OLD_THRESHOLD),
        ("calibrated", bundle.temperature, bundle.confidence_threshold),
    ):
        probs = softmax(logits / temperature, axis=1)
        confidence = probs.max(axis=1)
        correct = probs.argmax(axis=1) == labels
        flagged = confidence < threshold
        row[name] = {
            "temperature": temperature,
            "threshold": threshold,
            "accuracy": float(correct[known].mean()),
            "mean_confidence": float(confidence[known].mean()),
            "ece": expected_calibration_error(probs[known], labels[known]),
            "flagged": float(flagged.mean()),
            "correct_flagged": float(flagged[correct].mean()),
        }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="new_identity_discovery")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    adata = load_kang()
    rows = [
        measure(adata, source, args.config, args.seed, args.epochs) for source in ("ctrl", "stim")
    ]
    print("\n| direction | accuracy | mean confidence | ECE raw -> calibrated | temperature | Unknown "
          "at 0.9: all / correct | Unknown at calibrated threshold: all / correct |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        raw, cal = row["raw"], row["calibrated"]
        other = "stim" if row["source"] == "ctrl" else "ctrl"
        print(
            f"| {row['source']}->{other} | {raw['accuracy']:.3f} | {raw['mean_confidence']:.3f} -> "
            f"{cal['mean_confidence']:.3f} | {raw['ece']:.3f} -> {cal['ece']:.3f} | "
            f"{cal['temperature']:.2f} | {raw['flagged']:.1%} / {raw['correct_flagged']:.1%} | "
            f"{cal['flagged']:.1%} / {cal['correct_flagged']:.1%} (threshold {cal['threshold']:.3f}) |"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

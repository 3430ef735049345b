"""Where the Grad-CAM of a phantom-trained model points: trains the small DenseNet of the
convergence test (dicom_node.testing) and prints, per finding, the held-out AUROC and, for the
correctly detected lesions, how often the Grad-CAM peak lies inside the true box ("strict") and
within the pointing game's tolerance of it (15 px at 224 px, Zhang et al. 2018).

    .venv/bin/python bench/bench_localisation.py [--labels all|A,B,...] [--epochs 15]
        [--n-train 1200] [--input-size 96] [--seed 0] [--bundle DIR]

About half a minute per run of the test's recipe on two cores. A figure, not a test: nothing is
asserted. --bundle scores an existing bundle instead of training one.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from dicom_node.bundle import load_bundle
from dicom_node.evaluate import evaluate, localisation, predict_dataset
from dicom_node.infer import Classifier
from dicom_node.phantoms import LABELS
from dicom_node.testing import CONVERGENCE_LABELS, held_out_phantoms, train_small_on_phantoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", default=",".join(CONVERGENCE_LABELS))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", type=Path, help="score this bundle; train none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    labels = LABELS if args.labels == "all" else tuple(args.labels.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        if args.bundle is None:
            bundle = train_small_on_phantoms(
                Path(tmp) / "bundle",
                labels=labels,
                input_size=args.input_size,
                n_train=args.n_train,
                epochs=args.epochs,
                seed=args.seed,
            ).bundle
        else:
            bundle = load_bundle(args.bundle)
        trained = time.monotonic() - started
        classifier = Classifier(bundle, torch.device("cpu"))
        held_out = held_out_phantoms(bundle)
        report = evaluate(bundle, predict_dataset(classifier, held_out, description="held out"))
        loc = localisation(classifier, held_out, thresholds=bundle.thresholds)
    print(f"{'finding':<20} {'AUROC':>6} {'detected':>8} {'strict':>7} {'pointing':>8}")
    for label in bundle.labels:
        n = loc["labels"][label]
        d = max(n["detected"], 1)
        auroc = report["labels"][label]["auroc"]
        print(
            f"{label:<20} {auroc:6.3f} {n['detected']:>8} "
            f"{n['hits'] / d:7.0%} {n['pointing_hits'] / d:8.0%}"
        )
    print(
        f"{'all':<20} {report['mean_auroc']:6.3f} {loc['detected']:>8} "
        f"{loc['hit_rate']:7.1%} {loc['pointing_rate']:8.1%}"
        f"   ({len(held_out)} held-out phantoms; training {trained:.0f} s)"
    )


if __name__ == "__main__":
    main()

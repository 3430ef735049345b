"""Where the Grad-CAM of a phantom-trained model points: trains the small DenseNet of the
convergence test (dicom_node.testing) and prints, per finding, the held-out AUROC and, for the
correctly detected lesions, how often the Grad-CAM peak lies inside the true box ("strict") and
within the pointing game's tolerance of it (15 px at 224 px, Zhang et al. 2018).

    .venv/bin/python bench/bench_localisation.py [--labels all|A,B,...] [--epochs 15]
        [--n-train 1200] [--input-size 96] [--seeds 0,1,2,3,4] [--shift 0.1667] [--bundle DIR]

About half a minute per seed of the test's recipe on two cores; with several seeds it ends with
one line per seed and their mean (the strict rate varies with the training seed). A figure, not a
test: nothing is asserted. --bundle scores an existing bundle instead of training one.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dicom_node.model.bundle import Bundle, load_bundle
from dicom_node.model.infer import Classifier
from dicom_node.synthetic.localisation import localisation
from dicom_node.synthetic.phantoms import LABELS
from dicom_node.synthetic.samples import PHANTOM_SHIFT
from dicom_node.testing import CONVERGENCE_LABELS, held_out_phantoms, train_small_on_phantoms
from dicom_node.training.evaluate import evaluate, predict_dataset


def score(bundle: Bundle) -> tuple[dict[str, Any], dict[str, Any]]:
    """The held-out evaluation report and localisation counts of a bundle."""
    classifier = Classifier(bundle, torch.device("cpu"))
    held_out = held_out_phantoms(bundle)
    report = evaluate(bundle, predict_dataset(classifier, held_out, description="held out"))
    return report, localisation(classifier, held_out, thresholds=bundle.thresholds)


def print_labels(bundle: Bundle, report: dict[str, Any], loc: dict[str, Any]) -> None:
    print(f"{'finding':<20} {'AUROC':>6} {'detected':>8} {'strict':>7} {'pointing':>8}")
    for label in bundle.labels:
        n = loc["labels"][label]
        d = max(n["detected"], 1)
        auroc = report["labels"][label]["auroc"]
        print(
            f"{label:<20} {auroc:6.3f} {n['detected']:>8} "
            f"{n['hits'] / d:7.0%} {n['pointing_hits'] / d:8.0%}"
        )


def summary(name: str, report: dict[str, Any], loc: dict[str, Any], seconds: float) -> str:
    return (
        f"{name:<20} {report['mean_auroc']:6.3f} {loc['detected']:>8} "
        f"{loc['hit_rate']:7.1%} {loc['pointing_rate']:8.1%}   (training {seconds:.0f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", default=",".join(CONVERGENCE_LABELS))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--shift", type=float, default=PHANTOM_SHIFT, help="fraction of the side")
    parser.add_argument("--bundle", type=Path, help="score this bundle; train none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    labels = LABELS if args.labels == "all" else tuple(args.labels.split(","))
    if args.bundle is not None:
        bundle = load_bundle(args.bundle)
        report, loc = score(bundle)
        print_labels(bundle, report, loc)
        print(summary("all", report, loc, 0.0))
        return
    lines, strict = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.monotonic()
            bundle = train_small_on_phantoms(
                Path(tmp) / "bundle",
                labels=labels,
                input_size=args.input_size,
                n_train=args.n_train,
                epochs=args.epochs,
                seed=seed,
                shift=args.shift,
            ).bundle
            trained = time.monotonic() - started
            report, loc = score(bundle)
        print(f"\nseed {seed}")
        print_labels(bundle, report, loc)
        lines.append(summary(f"seed {seed}", report, loc, trained))
        strict.append(loc["hit_rate"])
    print(f"\n{'':<20} {'AUROC':>6} {'detected':>8} {'strict':>7} {'pointing':>8}")
    print("\n".join(lines))
    if len(strict) > 1:
        print(f"strict: mean {statistics.mean(strict):.1%}, lowest {min(strict):.1%}")


if __name__ == "__main__":
    main()

"""`dicom-node train` and `dicom-node evaluate` (with `--calibrate`): their arguments (importing
no torch, so that `dicom-node --help` stays fast) and the commands, which run in
`model_commands`."""

from __future__ import annotations

import argparse
from pathlib import Path

from dicom_node.training.chexpert import CHEXPERT_LABELS, UNCERTAIN_POLICIES
from dicom_node.training.datasets import CXR14_LABELS

DEFAULT_VERSION = "0.1.0"
NETWORKS = ("DenseNet121", "DenseNet169", "DenseNet201", "DenseNet")
KNOWN_LABELS = (*CXR14_LABELS, *(label for label in CHEXPERT_LABELS if label not in CXR14_LABELS))


def parse_labels(text: str) -> tuple[str, ...]:
    """A comma-separated list of ChestX-ray14 or CheXpert labels, in the order given."""
    labels = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [label for label in labels if label not in KNOWN_LABELS]
    if unknown or not labels or len(set(labels)) != len(labels):
        known = ", ".join(KNOWN_LABELS)
        raise argparse.ArgumentTypeError(f"unknown or repeated labels {unknown}; known: {known}")
    return labels


def layout_arguments(parser: argparse.ArgumentParser) -> None:
    """How a CheXpert or MIMIC-CXR-JPG folder is read (the other layouts ignore these)."""
    parser.add_argument(
        "--uncertain",
        choices=UNCERTAIN_POLICIES,
        default="ignore",
        help="CheXpert's and MIMIC-CXR's uncertain (-1.0) labels: ignore (left out of loss and "
        "metrics), zeros (negative) or ones (positive)",
    )
    parser.add_argument(
        "--lateral",
        action="store_true",
        help="CheXpert, MIMIC-CXR: lateral views too, not only frontal ones",
    )


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="train on generated phantoms")
    source.add_argument(
        "--data",
        type=Path,
        help="ChestX-ray14, CheXpert or MIMIC-CXR-JPG folder, or a DICOM folder",
    )
    parser.add_argument("--labels-csv", type=Path, help="labels of a DICOM folder (labels.csv)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="patients for validation")
    parser.add_argument(
        "--no-augment",
        action="store_true",
        help="no augmentation (files: rotation, scale, shift, intensity; phantoms: shifts)",
    )
    parser.add_argument("--n-train", type=int, default=2000, help="phantoms for training")
    parser.add_argument("--n-val", type=int, default=500, help="phantoms for validation")
    parser.add_argument("--phantom-size", type=int, default=256, help="phantom side, pixels")
    parser.add_argument("--prevalence", type=float, default=0.15, help="chance of each finding")
    parser.add_argument(
        "--labels",
        type=parse_labels,
        help="comma-separated labels; else the data set's (ChestX-ray14's 14; CheXpert's and "
        "MIMIC-CXR's 13)",
    )
    layout_arguments(parser)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-size", type=int, default=128, help="model input side, pixels")
    parser.add_argument(
        "--network", choices=NETWORKS, default="DenseNet121", help="MONAI DenseNet variant"
    )
    parser.add_argument("--init-features", type=int, help="DenseNet initial features")
    parser.add_argument("--growth-rate", type=int, help="DenseNet growth rate")
    parser.add_argument("--block-config", type=_ints, help="layers per block (DenseNet only)")
    parser.add_argument(
        "--name", help="bundle name (default: the data's, e.g. phantoms-densenet121)"
    )
    parser.add_argument("--version", default=DEFAULT_VERSION, help="bundle version")


def _loop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of data split, phantoms, weights")
    parser.add_argument("--epochs", type=int, default=6, help="passes over the training data")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument(
        "--loss",
        choices=("weighted-bce", "focal"),
        default="weighted-bce",
        help="class-weighted binary cross-entropy or focal loss",
    )
    parser.add_argument("--focal-gamma", type=float, default=2.0, help="focal loss gamma")
    parser.add_argument("--weight-cap", type=float, default=10.0, help="largest pos_weight")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--mlflow",
        choices=("auto", "on", "off"),
        default="auto",
        help="log to MLflow (auto: when installed)",
    )
    parser.add_argument("--experiment", default="dicom-node", help="MLflow experiment name")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or lines")


def configure_train(parser: argparse.ArgumentParser) -> None:
    """Arguments of `dicom-node train`."""
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    _data_arguments(parser)
    _model_arguments(parser)
    _loop_arguments(parser)


def configure_evaluate(parser: argparse.ArgumentParser) -> None:
    """Arguments of `dicom-node evaluate`."""
    parser.add_argument("bundle", type=Path, help="bundle folder (models/<name>)")
    parser.add_argument(
        "data", type=Path, nargs="?", help="ChestX-ray14, CheXpert, MIMIC-CXR-JPG or DICOM folder"
    )
    parser.add_argument("--labels-csv", type=Path, help="labels of a DICOM folder (labels.csv)")
    parser.add_argument(
        "--split",
        choices=("test", "val", "train", "all"),
        default="test",
        help="which part of the data set to score",
    )
    layout_arguments(parser)
    parser.add_argument("--synthetic", type=int, metavar="N", help="N fresh phantoms instead")
    parser.add_argument(
        "--seed", type=int, default=0, help="phantom seed; also the val split and the bootstrap"
    )
    parser.add_argument("--phantom-size", type=int, default=256, help="phantom side, pixels")
    parser.add_argument(
        "--prevalence", type=float, default=0.15, help="chance of each finding (phantoms)"
    )
    parser.add_argument("--localisation", action="store_true", help="phantoms: Grad-CAM hits")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for evaluation.json and roc.png, . if not given; with --calibrate, the "
        "new bundle (evaluation.json and roc.png in its docs/)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap replicates of the AUROC's 95%% CI"
    )
    calibration = parser.add_argument_group("calibration (docs/models.md)")
    calibration.add_argument(
        "--calibrate",
        action="store_true",
        help="choose each finding's threshold on these data (Youden's J unless "
        "--target-sensitivity) and write a new bundle version to --out",
    )
    calibration.add_argument(
        "--target-sensitivity",
        type=float,
        metavar="S",
        help="the highest threshold whose sensitivity is at least S (0 < S <= 1)",
    )
    calibration.add_argument(
        "--version", help="the calibrated bundle's version; <version>+cal.<yyyymmdd> if not given"
    )


def run_train(args: argparse.Namespace) -> int:
    """Run `dicom-node train`; returns the exit status."""
    from dicom_node.cli.model_commands import train_command

    return train_command(args)


def run_evaluate(args: argparse.Namespace) -> int:
    """Run `dicom-node evaluate`; returns the exit status."""
    from dicom_node.cli.model_commands import evaluate_command

    return evaluate_command(args)

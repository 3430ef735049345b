"""`dicom-node train`: a bundle from phantoms, NIH ChestX-ray14 or a DICOM folder with labels."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from dicom_node.model.infer import resolve_device
from dicom_node.model.preprocess import InputSpec
from dicom_node.synthetic.phantoms import LABELS
from dicom_node.training.datasets import DatasetError, read_layout
from dicom_node.training.fit import FitConfig
from dicom_node.training.tracking import mlflow_available
from dicom_node.training.trainer import (
    MEAN,
    PHANTOM_SHIFT,
    STD,
    TrainConfig,
    TrainingData,
    file_data,
    phantom_data,
    train,
)

log = logging.getLogger(__name__)

DEFAULT_NAME = "cxr14-densenet121-demo"
DEFAULT_VERSION = "0.1.0"
NETWORKS = ("DenseNet121", "DenseNet169", "DenseNet201", "DenseNet")


def _labels(text: str) -> tuple[str, ...]:
    labels = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [label for label in labels if label not in LABELS]
    if unknown or not labels:
        raise argparse.ArgumentTypeError(f"unknown labels {unknown}; known: {', '.join(LABELS)}")
    return labels


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="train on generated phantoms")
    source.add_argument(
        "--data", type=Path, help="ChestX-ray14 root (Data_Entry_2017.csv) or a DICOM folder"
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
    parser.add_argument("--labels", type=_labels, default=LABELS, help="comma-separated subset")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-size", type=int, default=128, help="model input side, pixels")
    parser.add_argument("--network", choices=NETWORKS, default="DenseNet121")
    parser.add_argument("--init-features", type=int, help="DenseNet initial features")
    parser.add_argument("--growth-rate", type=int, help="DenseNet growth rate")
    parser.add_argument("--block-config", type=_ints, help="layers per block (DenseNet only)")
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--version", default=DEFAULT_VERSION)


def _loop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--loss", choices=("weighted-bce", "focal"), default="weighted-bce")
    parser.add_argument("--focal-gamma", type=float, default=2.0)
    parser.add_argument("--weight-cap", type=float, default=10.0, help="largest pos_weight")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--mlflow", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--experiment", default="dicom-node", help="MLflow experiment name")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or lines")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of `dicom-node train`."""
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    _data_arguments(parser)
    _model_arguments(parser)
    _loop_arguments(parser)


def _network_kwargs(args: argparse.Namespace) -> dict[str, object]:
    kwargs: dict[str, object] = {}
    if args.init_features is not None:
        kwargs["init_features"] = args.init_features
    if args.growth_rate is not None:
        kwargs["growth_rate"] = args.growth_rate
    if args.block_config is not None:
        if args.network != "DenseNet":
            raise ValueError("--block-config needs --network DenseNet")
        kwargs["block_config"] = args.block_config
    return kwargs


def config_from(args: argparse.Namespace) -> TrainConfig:
    """The training configuration the command line asks for."""
    if args.mlflow == "on" and not mlflow_available():
        raise ValueError("--mlflow on needs MLflow: pip install 'dicom-node[mlflow]'")
    fit = FitConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        loss=args.loss,
        focal_gamma=args.focal_gamma,
        weight_cap=args.weight_cap,
        workers=args.workers,
        device=resolve_device(args.device),
        progress=not args.no_progress,
    )
    return TrainConfig(
        name=args.name,
        version=args.version,
        labels=tuple(args.labels),
        spec=InputSpec(size=args.input_size, mean=MEAN, std=STD),
        fit=fit,
        network=args.network,
        network_kwargs=_network_kwargs(args),
        mlflow=args.mlflow,
        experiment=args.experiment,
    )


def data_from(args: argparse.Namespace, config: TrainConfig) -> TrainingData:
    """Phantoms (--synthetic) or the files of --data, in either layout."""
    if args.synthetic:
        return phantom_data(
            seed=args.seed,
            n_train=args.n_train,
            n_val=args.n_val,
            spec=config.spec,
            labels=config.labels,
            phantom_size=args.phantom_size,
            prevalence=args.prevalence,
            shift=0.0 if args.no_augment else PHANTOM_SHIFT,
        )
    split = read_layout(args.data, args.labels_csv, val_fraction=args.val_fraction, seed=args.seed)
    return file_data(split, spec=config.spec, labels=config.labels, augment=not args.no_augment)


def run(args: argparse.Namespace) -> int:
    """Run `dicom-node train`; returns the exit status."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        config = config_from(args)
        data = data_from(args, config)
    except (DatasetError, ValueError) as exc:
        log.error("train: %s", exc)
        return 2
    train(args.out, data, config)
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m dicom_node.training.train")
    configure_parser(_parser)
    raise SystemExit(run(_parser.parse_args()))

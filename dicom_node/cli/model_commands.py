"""What `dicom-node train` and `dicom-node evaluate` do once their arguments are parsed
(`models` defines those): the data source, the training configuration, the run, calibration."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from dicom_node.model.bundle import Bundle, BundleError, load_bundle
from dicom_node.model.infer import Classifier, resolve_device
from dicom_node.model.preprocess import InputSpec
from dicom_node.synthetic.localisation import localisation
from dicom_node.synthetic.samples import (
    PHANTOM_SHIFT,
    SYNTHETIC_SEED_OFFSET,
    PhantomDataset,
    phantom_data,
)
from dicom_node.training.calibrate import ThresholdRule, choose_thresholds, write_calibrated_bundle
from dicom_node.training.chexpert import CHEXPERT_LABELS, is_chexpert
from dicom_node.training.datasets import CXR14_LABELS, DatasetError, Split, read_layout
from dicom_node.training.evaluate import (
    Predictions,
    evaluate,
    format_table,
    predict_dataset,
    write_outputs,
)
from dicom_node.training.fit import FitConfig
from dicom_node.training.mimic import is_mimic
from dicom_node.training.samples import RecordDataset
from dicom_node.training.tracking import mlflow_available
from dicom_node.training.trainer import MEAN, STD, TrainConfig, TrainingData, file_data, train
from structured_reports.codes import FINDING_CODES

log = logging.getLogger(__name__)


def bundle_name(args: argparse.Namespace) -> str:
    """`--name`, or a name after the data and the network: `phantoms-densenet121` for
    `--synthetic`, `<data folder>-densenet121` for `--data` (never the demo bundle's name)."""
    if args.name:
        return str(args.name)
    source = "phantoms" if args.synthetic else Path(args.data).resolve().name
    slug = re.sub(r"[^a-z0-9]+", "-", source.lower()).strip("-") or "data"
    return f"{slug}-{args.network.lower()}"


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


def default_labels(args: argparse.Namespace) -> tuple[str, ...]:
    """`--labels`, else the data set's: CheXpert's for a CheXpert or MIMIC-CXR-JPG folder (both
    labelled by the CheXpert labeller), else ChestX-ray14's."""
    if args.labels:
        return tuple(args.labels)
    if not args.synthetic and args.labels_csv is None:
        data = Path(args.data)
        if is_chexpert(data) or is_mimic(data):
            return CHEXPERT_LABELS
    return CXR14_LABELS


def _check_coded(labels: tuple[str, ...]) -> None:
    """Every label has a code before training starts (the bundle could not be written after)."""
    uncoded = [label for label in labels if label not in FINDING_CODES]
    if uncoded:
        raise ValueError(
            f"labels without a coded concept in structured_reports/codes.py: {uncoded}; "
            "choose others with --labels"
        )


def _split(args: argparse.Namespace, *, val_fraction: float = 0.1) -> Split:
    return read_layout(
        args.data,
        args.labels_csv,
        val_fraction=val_fraction,
        seed=args.seed,
        uncertain=args.uncertain,
        frontal_only=not args.lateral,
    )


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
        name=bundle_name(args),
        version=args.version,
        labels=default_labels(args),
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
    split = _split(args, val_fraction=args.val_fraction)
    return file_data(split, spec=config.spec, labels=config.labels, augment=not args.no_augment)


def train_command(args: argparse.Namespace) -> int:
    """`dicom-node train`: the exit status."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        config = config_from(args)
        _check_coded(config.labels)
        data = data_from(args, config)
        train(args.out, data, config)
    except (DatasetError, ValueError) as exc:
        log.error("train: %s", exc)
        return 2
    return 0


def _dataset(args: argparse.Namespace, bundle: Bundle) -> tuple[Dataset[Any], str]:
    if args.synthetic:
        phantoms = PhantomDataset(
            seed=args.seed + SYNTHETIC_SEED_OFFSET,
            n=args.synthetic,
            spec=bundle.input_spec,
            phantom_size=args.phantom_size,
            prevalence=args.prevalence,
            labels=bundle.labels,
        )
        return phantoms, f"{args.synthetic} synthetic phantoms, seed {args.seed}"
    if args.data is None:
        raise DatasetError(
            "give DATA (a ChestX-ray14, CheXpert or MIMIC-CXR-JPG root, or a DICOM folder) "
            "or --synthetic N"
        )
    split = _split(args)
    records = split.part(args.split)
    name = args.split
    if not records and args.split == "test":
        records, name = split.part("all"), "all (no test split)"
    if not records:
        raise DatasetError(f"{args.data}: no images in split {args.split!r}")
    dataset = RecordDataset(records, labels=bundle.labels, spec=bundle.input_spec)
    return dataset, f"{split.description}; evaluated: {name}, {len(records)} images"


def _calibrate(
    args: argparse.Namespace, bundle: Bundle, predictions: Predictions
) -> tuple[Bundle, dict[str, Any]]:
    """The thresholds chosen on these data, the report at them, the new bundle version."""
    target = args.target_sensitivity
    rule = ThresholdRule(method="sensitivity" if target else "youden", target=target)
    thresholds, kept = choose_thresholds(bundle, predictions, rule)
    report = evaluate(
        bundle, predictions, thresholds=thresholds, replicates=args.bootstrap, seed=args.seed
    )
    calibrated = write_calibrated_bundle(
        bundle,
        args.out,
        report=report,
        rule=rule,
        thresholds=thresholds,
        kept=kept,
        version=args.version,
    )
    report["bundle"] = {"name": calibrated.identity.name, "version": calibrated.identity.version}
    report["calibrated_from"] = {"version": bundle.identity.version, "rule": rule.describe()}
    return calibrated, report


def _check_calibration_args(args: argparse.Namespace) -> None:
    if args.calibrate and args.out is None:
        raise DatasetError("--calibrate needs --out DIR, the folder of the new bundle version")
    if not args.calibrate and (args.target_sensitivity is not None or args.version):
        raise DatasetError("--target-sensitivity and --version apply only with --calibrate")


def evaluate_command(args: argparse.Namespace) -> int:
    """`dicom-node evaluate`: the exit status."""
    try:
        _check_calibration_args(args)
        bundle = load_bundle(args.bundle)
        dataset, description = _dataset(args, bundle)
    except (BundleError, DatasetError, ValueError) as exc:
        log.error("evaluate: %s", exc)
        print(f"evaluate: {exc}")
        return 2
    classifier = Classifier(bundle, resolve_device(args.device), max_batch=args.batch_size)
    predictions = predict_dataset(
        classifier,
        dataset,
        description=description,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    out = args.out or Path(".")
    if args.calibrate:
        try:
            bundle, report = _calibrate(args, bundle, predictions)
        except (BundleError, ValueError) as exc:
            print(f"evaluate: {exc}")
            return 2
        out = bundle.path / "docs"
    else:
        report = evaluate(bundle, predictions, replicates=args.bootstrap, seed=args.seed)
    if args.localisation and isinstance(dataset, PhantomDataset):
        report["localisation"] = localisation(classifier, dataset, thresholds=bundle.thresholds)
    json_path, png = write_outputs(report, predictions, out)
    print(f"{bundle.identity.label}: {description}")
    print(format_table(report))
    if "localisation" in report:
        loc = report["localisation"]
        print(
            f"Grad-CAM peak inside the true box: {loc['hits']}/{loc['detected']} detected "
            f"findings; within the pointing-game tolerance: {loc['pointing_hits']}"
        )
    if args.calibrate:
        print(f"wrote the calibrated bundle {bundle.identity.label} to {bundle.path}")
    print(f"wrote {json_path} and {png}")
    return 0

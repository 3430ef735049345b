"""`dicom-node evaluate BUNDLE DATA`: per-label AUROC, sensitivity and specificity, JSON, ROC."""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dicom_node.model.batching import analyse_batch
from dicom_node.model.bundle import Bundle, BundleError, load_bundle
from dicom_node.model.explain import map_to_display
from dicom_node.model.infer import Classifier, resolve_device
from dicom_node.training.classification_metrics import Floats, json_safe, label_metrics, roc_curve
from dicom_node.training.datasets import DatasetError, read_layout
from dicom_node.training.roc_plot import write_roc_png
from dicom_node.training.samples import PhantomDataset, RecordDataset

log = logging.getLogger(__name__)

SYNTHETIC_SEED_OFFSET = 7_000_001  # far from the training (seed) and validation seeds


@dataclass(frozen=True, kw_only=True, slots=True)
class Predictions:
    """Probabilities and targets (N, labels) of a data set, and what the data set was."""

    probs: Floats
    truth: Floats
    description: str


def predict_dataset(
    classifier: Classifier,
    dataset: Dataset[Any],
    *,
    description: str,
    batch_size: int = 32,
    workers: int = 0,
) -> Predictions:
    """The classifier's probabilities for every sample of `dataset`."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    probs, truth = [], []
    for x, y in loader:
        probs.append(classifier.predict(x).astype(np.float64))
        truth.append(y.numpy().astype(np.float64))
    return Predictions(
        probs=np.concatenate(probs), truth=np.concatenate(truth), description=description
    )


def evaluate(bundle: Bundle, predictions: Predictions) -> dict[str, Any]:
    """Metrics at the bundle's thresholds, with the bundle's identity and the data described."""
    metrics = label_metrics(predictions.probs, predictions.truth, bundle.labels, bundle.thresholds)
    return {
        "bundle": {"name": bundle.identity.name, "version": bundle.identity.version},
        "weights_sha256": bundle.identity.weights_sha256,
        "data": predictions.description,
        **metrics,
    }


POINTING_TOLERANCE = 15 / 224  # the pointing game's 15 px at 224 px, as a fraction of the side


def _distance_outside(y: int, x: int, box: tuple[int, int, int, int]) -> int:
    """Pixels from (y, x) to the box (y0, x0, y1, x1), end exclusive; 0 inside."""
    y0, x0, y1, x1 = box
    return max(y0 - y, 0, y - (y1 - 1), x0 - x, x - (x1 - 1))


def localisation(
    classifier: Classifier,
    dataset: PhantomDataset,
    *,
    thresholds: Sequence[float],
    indices: Sequence[int] | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """For every finding that is present and detected (at its threshold), where the peak of its
    Grad-CAM map on the display image lies: inside the true box ('hits'), or within the pointing
    game's tolerance of it ('pointing_hits': 15 px at 224 px, Zhang et al. 2018). Per label."""
    chosen = list(range(len(dataset)) if indices is None else indices)
    counts = {label: [0, 0, 0] for label in dataset.labels}  # hits, pointing hits, detected
    for start in range(0, len(chosen), batch_size):
        items = [dataset.prepared(i) for i in chosen[start : start + batch_size]]
        batch = torch.stack([x for _, x, _ in items])
        result = analyse_batch(classifier, batch, thresholds, explain="present")
        for (phantom, _, box), maps in zip(items, result.maps, strict=True):
            tolerance = POINTING_TOLERANCE * max(phantom.image.shape)
            for k, cam in maps.items():
                label = dataset.labels[k]
                if label not in phantom.findings:
                    continue  # a false positive has no box
                shown = map_to_display(cam, box, phantom.image.shape)
                y, x = np.unravel_index(int(np.argmax(shown)), shown.shape)
                distance = _distance_outside(int(y), int(x), phantom.findings[label])
                counts[label][0] += int(distance == 0)
                counts[label][1] += int(distance <= tolerance)
                counts[label][2] += 1
    hits, pointing, detected = (sum(c[j] for c in counts.values()) for j in range(3))
    return {
        "hit_rate": hits / detected if detected else math.nan,
        "pointing_rate": pointing / detected if detected else math.nan,
        "hits": hits,
        "pointing_hits": pointing,
        "detected": detected,
        "labels": {
            k: {"hits": c[0], "pointing_hits": c[1], "detected": c[2]} for k, c in counts.items()
        },
    }


def format_table(report: Mapping[str, Any]) -> str:
    """The per-label metrics as an aligned text table."""
    lines = [f"{'label':<20} {'AUROC':>7} {'thresh':>7} {'sens':>6} {'spec':>6} {'pos':>6}"]
    for label, m in report["labels"].items():
        cells = [m["auroc"], m["threshold"], m["sensitivity"], m["specificity"]]
        text = ["   n/a" if v is None or math.isnan(v) else f"{v:6.3f}" for v in cells]
        auc, thr, sens, spec = text
        lines.append(f"{label:<20} {auc:>7} {thr:>7} {sens:>6} {spec:>6} {m['positives']:>6}")
    lines.append(f"{'mean AUROC':<20} {report['mean_auroc']:7.3f}  ({report['n_images']} images)")
    return "\n".join(lines)


def write_outputs(
    report: Mapping[str, Any], predictions: Predictions, out: Path
) -> tuple[Path, Path]:
    """evaluation.json and roc.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "evaluation.json"
    json_path.write_text(json.dumps(json_safe(dict(report)), indent=2, allow_nan=False) + "\n")
    labels = list(report["labels"])
    probs, truth = predictions.probs, predictions.truth
    curves = {k: roc_curve(probs[:, i], truth[:, i]) for i, k in enumerate(labels)}
    aurocs = {k: report["labels"][k]["auroc"] for k in labels}
    points = {k: (1 - m["specificity"], m["sensitivity"]) for k, m in report["labels"].items()}
    title = f"{report['bundle']['name']} {report['bundle']['version']}: {report['n_images']} images"
    png = write_roc_png(out / "roc.png", curves, aurocs, title=title, operating_points=points)
    return json_path, png


# ---- command line -----------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of `dicom-node evaluate`."""
    parser.add_argument("bundle", type=Path, help="bundle folder (models/<name>)")
    parser.add_argument("data", type=Path, nargs="?", help="ChestX-ray14 root or DICOM folder")
    parser.add_argument("--labels-csv", type=Path, help="labels of a DICOM folder (labels.csv)")
    parser.add_argument("--split", choices=("test", "val", "train", "all"), default="test")
    parser.add_argument("--synthetic", type=int, metavar="N", help="N fresh phantoms instead")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed; also the val split")
    parser.add_argument("--phantom-size", type=int, default=256)
    parser.add_argument("--prevalence", type=float, default=0.15)
    parser.add_argument("--localisation", action="store_true", help="phantoms: Grad-CAM hits")
    parser.add_argument("--out", type=Path, default=Path("."), help="evaluation.json, roc.png")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


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
        raise DatasetError("give DATA (a ChestX-ray14 root or a DICOM folder) or --synthetic N")
    split = read_layout(args.data, args.labels_csv, seed=args.seed)
    records = split.part(args.split)
    name = args.split
    if not records and args.split == "test":
        records, name = split.part("all"), "all (no test split)"
    if not records:
        raise DatasetError(f"{args.data}: no images in split {args.split!r}")
    dataset = RecordDataset(records, labels=bundle.labels, spec=bundle.input_spec)
    return dataset, f"{split.description}; evaluated: {name}, {len(records)} images"


def run(args: argparse.Namespace) -> int:
    """Run `dicom-node evaluate`; returns the exit status."""
    try:
        bundle = load_bundle(args.bundle)
        dataset, description = _dataset(args, bundle)
    except (BundleError, DatasetError) as exc:
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
    report = evaluate(bundle, predictions)
    if args.localisation and isinstance(dataset, PhantomDataset):
        report["localisation"] = localisation(classifier, dataset, thresholds=bundle.thresholds)
    json_path, png = write_outputs(report, predictions, args.out)
    print(f"{bundle.identity.label}: {description}")
    print(format_table(report))
    if "localisation" in report:
        loc = report["localisation"]
        print(
            f"Grad-CAM peak inside the true box: {loc['hits']}/{loc['detected']} detected "
            f"findings; within the pointing-game tolerance: {loc['pointing_hits']}"
        )
    print(f"wrote {json_path} and {png}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _parser = argparse.ArgumentParser(prog="python -m dicom_node.training.evaluate")
    configure_parser(_parser)
    raise SystemExit(run(_parser.parse_args()))

"""`dicom-node bundle check` (would the node serve this bundle, and how), `dicom-node bundle
import` (a published torchvision-layout DenseNet checkpoint as a bundle) and `dicom-node bundle
export` (ONNX, a Triton model repository): docs/models.md. Torch is imported only when a command
runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dicom_node.cli.models import parse_labels
from dicom_node.training.datasets import CXR14_LABELS

IMAGENET_MEAN, IMAGENET_STD = "0.485,0.456,0.406", "0.229,0.224,0.225"
TRITON_MAX_BATCH = 256  # model.infer.DEVICE_MAX_BATCH["cuda"], the node's own CUDA batch


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text!r}") from exc
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError("give one value, or one per channel (three)")
    return values


def configure_bundle(parser: argparse.ArgumentParser) -> None:
    """`bundle check`, `bundle import` and `bundle export`."""
    actions = parser.add_subparsers(dest="action", required=True)
    check = actions.add_parser(
        "check",
        help="validate a bundle (ours or a MONAI model-zoo one) as the node would load it",
        description="Load the bundle as `serve` would (allow-list, preprocessing, weights), run "
        "one image through it and say what it reads and reports.",
    )
    check.add_argument("bundle", type=Path, help="the bundle folder")
    check.set_defaults(func=cmd_check)
    imp = actions.add_parser(
        "import",
        help="make a bundle of a torchvision-layout DenseNet checkpoint (e.g. CheXNet)",
        description="Make a bundle of a DenseNet state_dict in torchvision's layout ('module.' "
        "and 'densenet121.' prefixes, old 'norm.1' names, 'classifier' or 'classifier.0' head).",
    )
    imp.add_argument("checkpoint", type=Path, help="the .pth / .pth.tar / .pt file")
    imp.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    imp.add_argument(
        "--labels",
        type=parse_labels,
        help="the classifier's outputs in order, comma-separated; else NIH ChestX-ray14's 14",
    )
    imp.add_argument("--input-size", type=int, default=224, help="side the network was trained at")
    imp.add_argument(
        "--mean", type=_floats, default=IMAGENET_MEAN, help="training mean, one or per channel"
    )
    imp.add_argument(
        "--std", type=_floats, default=IMAGENET_STD, help="training std, one or per channel"
    )
    imp.add_argument("--name", help="bundle name; after the file and the network if not given")
    imp.add_argument("--version", help="bundle version; 1.0.0+<SHA-256 prefix> if not given")
    imp.add_argument("--threshold", type=float, default=0.5, help="every label's threshold")
    imp.add_argument("--manufacturer", help="who made the weights (the SR's manufacturer)")
    imp.add_argument("--license", type=Path, help="text file: the weights' licence terms")
    imp.add_argument("--description", default="", help="the model card's description")
    imp.set_defaults(func=cmd_import)
    exp = actions.add_parser(
        "export", help="export a bundle's network as ONNX, or as a Triton model repository"
    )
    exp.add_argument("bundle", type=Path, help="bundle folder")
    exp.add_argument("--onnx", type=Path, metavar="OUT.onnx", help="ONNX file to write")
    exp.add_argument(
        "--triton", type=Path, metavar="DIR", help="model repository: DIR/<name>/1/model.onnx"
    )
    exp.add_argument(
        "--max-batch", type=int, default=TRITON_MAX_BATCH, help="Triton's max_batch_size"
    )
    exp.add_argument(
        "--no-check", action="store_true", help="skip the onnxruntime-against-PyTorch check"
    )
    exp.set_defaults(func=cmd_export)


def cmd_import(args: argparse.Namespace) -> int:
    """Import the checkpoint; exit status 2 with the reason when it cannot be."""
    from dicom_node.model.bundle import BundleError
    from dicom_node.model.bundle_import import ImportRequest, Normalisation, import_checkpoint

    try:
        license_text = args.license.read_text(encoding="utf-8") if args.license else None
        request = ImportRequest(
            labels=tuple(args.labels or CXR14_LABELS),
            input_size=args.input_size,
            normalisation=Normalisation(mean=args.mean, std=args.std),
            name=args.name,
            version=args.version,
            threshold=args.threshold,
            manufacturer=args.manufacturer,
            license_text=license_text,
            description=args.description,
        )
        bundle = import_checkpoint(args.checkpoint, args.out, request)
    except (BundleError, OSError, ValueError) as exc:
        print(f"bundle import: {exc}", file=sys.stderr)
        return 2
    identity = bundle.identity
    print(
        f"imported {args.checkpoint.name} as {identity.label} ({bundle.network_name}, "
        f"{bundle.in_channels} x {bundle.input_size} px, {len(bundle.labels)} labels) into "
        f"{bundle.path}\nweights SHA-256 {identity.weights_sha256}\n"
        "thresholds are uncalibrated: run `dicom-node evaluate BUNDLE DATA --calibrate --out DIR`"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Exit status 0 when the node would serve the bundle, 2 (with the reason) when not."""
    import torch

    from dicom_node.model.bundle import BundleError, load_bundle
    from dicom_node.model.infer import Classifier
    from dicom_node.model.preprocess import prepare

    try:
        bundle = load_bundle(args.bundle)
        classifier = Classifier(bundle, torch.device("cpu"))
        x, _ = prepare(torch.rand(300, 240).numpy(), bundle.input_spec)
        probs = classifier.predict(x[None])
    except (BundleError, TypeError, ValueError) as exc:
        print(f"bundle check: {exc}", file=sys.stderr)
        return 2
    identity, scope = bundle.identity, bundle.scope
    preprocessing = (
        bundle.pipeline.describe()
        if bundle.pipeline
        else f"the node's letterbox, (x - {bundle.mean}) / {bundle.std}"
    )
    print(
        f"{identity.name} {identity.version}: {bundle.network_name}, "
        f"{bundle.in_channels} x {bundle.input_size} px, weights SHA-256 "
        f"{identity.weights_sha256}\n"
        f"preprocessing: {preprocessing}\n"
        f"serves: SOP classes {', '.join(scope.sop_classes)}; modalities "
        f"{', '.join(scope.modalities)}; body parts {', '.join(scope.body_parts)}; views "
        f"{', '.join(scope.views) or 'any'}\n"
        + "".join(
            f"  {label}: {code.scheme} {code.value} ({code.meaning}), threshold {t:g}\n"
            for label, code, t in zip(bundle.labels, bundle.codes, bundle.thresholds, strict=True)
        )
        + f"one test image: {probs.shape[1]} probabilities in [0, 1]: the node can serve it"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export; exit status 2 when it cannot be done, 1 when onnxruntime disagrees with PyTorch."""
    from dicom_node.model.bundle import BundleError, load_bundle
    from dicom_node.model.export import (
        ExportError,
        check_onnx,
        export_onnx,
        write_triton_repository,
    )

    if args.onnx is None and args.triton is None:
        print("bundle export: give --onnx OUT.onnx and/or --triton DIR", file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(args.bundle)
        written = export_onnx(bundle, args.onnx) if args.onnx else None
        if args.triton:
            folder = write_triton_repository(
                bundle, args.triton, onnx_path=written, max_batch=args.max_batch
            )
            written = folder / "1" / "model.onnx"
            print(f"wrote the Triton model {folder} (config.pbtxt, labels.txt, 1/model.onnx)")
        if args.onnx:
            print(f"wrote {args.onnx}")
        if args.no_check or written is None:
            return 0
        check = check_onnx(bundle, written)
    except (BundleError, ExportError, OSError, ValueError) as exc:
        print(f"bundle export: {exc}", file=sys.stderr)
        return 2
    agrees = check.max_abs_diff <= 1e-4
    print(
        f"onnxruntime against PyTorch on a batch of {check.batch}: largest logit difference "
        f"{check.max_abs_diff:.2e} ({'within' if agrees else 'OVER'} 1e-4)"
    )
    return 0 if agrees else 1

"""A bundle's network as ONNX (dynamic batch) and as a Triton Inference Server model repository.

The graph takes the node's model input, `image` (N, C, S, S) float32 already prepared by
`preprocess.prepare` (letterboxed, normalised), and gives `logits` (N, labels): the probability is
their sigmoid, as `infer.Classifier` computes it. ONNX export needs the optional `onnx` extra
(onnx, onnxscript for torch's exporter, onnxruntime for the check).
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dicom_node.model.bundle import Bundle
from dicom_node.model.infer import DEVICE_MAX_BATCH

INPUT, OUTPUT = "image", "logits"
ONNX_EXTRA = "pip install 'dicom-node[onnx]'"
TRITON_MAX_BATCH = DEVICE_MAX_BATCH["cuda"]
TRITON_QUEUE_DELAY_US = 2000  # how long Triton may hold a request to fill a batch


class ExportError(RuntimeError):
    """The network could not be exported, or the exported graph disagrees with PyTorch."""


@dataclass(frozen=True, kw_only=True, slots=True)
class OnnxCheck:
    """onnxruntime against PyTorch on one batch: the largest logit difference."""

    batch: int
    max_abs_diff: float


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:
        raise ExportError(f"ONNX export needs {module}: {ONNX_EXTRA}") from exc


def export_onnx(bundle: Bundle, out: Path, *, opset: int = 18) -> Path:
    """Write the bundle's network to `out` as ONNX with a dynamic batch dimension; the model's
    metadata_props carry the bundle's name, version, weights SHA-256 and labels."""
    for module in ("onnx", "onnxscript"):
        _require(module)
    import onnx

    net = bundle.build_network("cpu")
    c, s = bundle.in_channels, bundle.input_size
    example = (torch.zeros(2, c, s, s),)
    batch = torch.export.Dim("batch", min=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch's exporter trips over its own pytree deprecations (torch 2.13)
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            net,
            example,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(out))
    model = onnx.load(str(out))
    identity = bundle.identity
    props = {
        "name": identity.name,
        "version": identity.version,
        "weights_sha256": identity.weights_sha256,
        "labels": json.dumps(list(bundle.labels)),
        "activation": "sigmoid",
    }
    onnx.helper.set_model_props(model, props)
    model.producer_name = "dicom-node"
    onnx.save(model, str(out))
    return out


def check_onnx(bundle: Bundle, onnx_path: Path, *, batch: int = 4, seed: int = 0) -> OnnxCheck:
    """Run the ONNX model with onnxruntime (CPU) and PyTorch on the same seeded batch."""
    _require("onnxruntime")
    import onnxruntime

    c, s = bundle.in_channels, bundle.input_size
    x = torch.randn(batch, c, s, s, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = bundle.build_network("cpu")(x).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT], {INPUT: x.numpy()})
    return OnnxCheck(batch=batch, max_abs_diff=float(np.abs(np.asarray(got) - expected).max()))


def triton_config(bundle: Bundle, *, max_batch: int = TRITON_MAX_BATCH) -> str:
    """config.pbtxt of the ONNX Runtime backend: dynamic batching up to `max_batch`."""
    identity = bundle.identity
    c, s, n = bundle.in_channels, bundle.input_size, len(bundle.labels)
    return (
        f"# {identity.label}, weights SHA-256 {identity.weights_sha256}\n"
        f"# written by dicom-node from {bundle.path.name}; outputs are logits: sigmoid them\n"
        f'name: "{identity.name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch}\n"
        "input [\n"
        "  {\n"
        f'    name: "{INPUT}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {c}, {s}, {s} ]\n"
        "  }\n"
        "]\n"
        "output [\n"
        "  {\n"
        f'    name: "{OUTPUT}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {n} ]\n"
        '    label_filename: "labels.txt"\n'
        "  }\n"
        "]\n"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {TRITON_QUEUE_DELAY_US}\n"
        "}\n"
    )


def write_triton_repository(
    bundle: Bundle, root: Path, *, onnx_path: Path | None = None, max_batch: int = TRITON_MAX_BATCH
) -> Path:
    """`root/<name>/1/model.onnx`, `root/<name>/config.pbtxt` and `root/<name>/labels.txt`;
    the ONNX file is copied from `onnx_path` or exported. Returns the model's folder."""
    if not 1 <= max_batch <= 4096:
        raise ValueError(f"max_batch must be 1..4096, not {max_batch}")
    folder = root / bundle.identity.name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    target = folder / "1" / "model.onnx"
    if onnx_path is None:
        export_onnx(bundle, target)
    elif onnx_path.resolve() != target.resolve():
        shutil.copyfile(onnx_path, target)
    (folder / "config.pbtxt").write_text(triton_config(bundle, max_batch=max_batch))
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in bundle.labels))
    return folder

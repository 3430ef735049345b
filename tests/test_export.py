"""`dicom-node bundle export`: the network as ONNX with a dynamic batch, checked with onnxruntime
against PyTorch, and as a Triton model repository (ONNX Runtime backend, dynamic batching)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_node.cli import bundles
from dicom_node.model.bundle import Bundle, instantiate_network, write_bundle
from dicom_node.model.infer import DEVICE_MAX_BATCH

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Mass")
SIZE = 64


def small_bundle(path: Path, *, channels: int = 3) -> Bundle:
    """A two-block DenseNet (exports in seconds; DenseNet121 takes about 35 s on two cores)."""
    torch.manual_seed(0)
    kwargs = {
        "spatial_dims": 2,
        "in_channels": channels,
        "out_channels": len(LABELS),
        "init_features": 8,
        "growth_rate": 4,
        "bn_size": 2,
        "block_config": [2, 2],
    }
    section = {
        "labels": list(LABELS),
        "thresholds": dict.fromkeys(LABELS, 0.5),
        "input_size": SIZE,
        "in_channels": channels,
        "intensity": {"mean": 0.5, "std": 0.25},
        "synthetic_demo": True,
    }
    return write_bundle(
        path,
        metadata={"name": "small-cxr", "version": "0.3.0", "dicom_node": section},
        network_def={"_target_": "monai.networks.nets.DenseNet", **kwargs},
        state_dict=instantiate_network("DenseNet", kwargs).state_dict(),
        license_text="test only\n",
    )


def _export(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    bundles.configure_bundle(parser)
    args = parser.parse_args(["export", *argv])
    return int(args.func(args))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path, Path]:
    """One export of both kinds: --onnx and --triton together (the ONNX file is reused)."""
    root = tmp_path_factory.mktemp("export")
    bundle = small_bundle(root / "bundle")
    status = _export(
        str(bundle.path), "--onnx", str(root / "m.onnx"), "--triton", str(root / "triton")
    )
    assert status == 0
    return bundle, root / "m.onnx", root / "triton"


def test_onnx_gives_pytorchs_logits_for_any_batch(exported: tuple[Bundle, Path, Path]) -> None:
    """onnxruntime's logits match the bundle's PyTorch network within 1e-4 for batches of 1, 5
    and 9 (the batch dimension is dynamic); inputs and outputs carry their names and dims."""
    bundle, path, _ = exported
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [source] = session.get_inputs()
    [target] = session.get_outputs()
    assert (source.name, source.shape[1:], target.name) == ("image", [3, SIZE, SIZE], "logits")
    assert isinstance(source.shape[0], str)  # symbolic: dynamic batch
    net = bundle.build_network("cpu")
    for n in (1, 5, 9):
        x = torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            expected = net(x).numpy()
        (got,) = session.run(["logits"], {"image": x.numpy()})
        assert got.shape == (n, len(LABELS))
        assert np.abs(got - expected).max() < 1e-4


def test_onnx_names_the_bundle(exported: tuple[Bundle, Path, Path]) -> None:
    """The model's metadata carries name, version, weights SHA-256 and the labels in order."""
    bundle, path, _ = exported
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["name"] == "small-cxr" and props["version"] == "0.3.0"
    assert props["weights_sha256"] == bundle.identity.weights_sha256
    assert json.loads(props["labels"]) == list(LABELS)
    onnx.checker.check_model(str(path))


def test_triton_repository_layout_and_config(exported: tuple[Bundle, Path, Path]) -> None:
    """DIR/<name>/1/model.onnx (the exported file), config.pbtxt for the ONNX Runtime backend
    with dynamic batching up to the node's CUDA batch (256), input and output names and dims
    (without the batch), and labels.txt in output order."""
    _, path, root = exported
    folder = root / "small-cxr"
    assert (folder / "1" / "model.onnx").read_bytes() == path.read_bytes()
    config = (folder / "config.pbtxt").read_text()
    assert re.search(r'^name: "small-cxr"$', config, re.M)
    assert 'platform: "onnxruntime_onnx"' in config
    assert bundles.TRITON_MAX_BATCH == DEVICE_MAX_BATCH["cuda"] == 256
    assert "max_batch_size: 256" in config
    assert re.search(r'name: "image"\s+data_type: TYPE_FP32\s+dims: \[ 3, 64, 64 \]', config)
    assert re.search(r'name: "logits"\s+data_type: TYPE_FP32\s+dims: \[ 4 \]', config)
    assert re.search(r"dynamic_batching \{\s+max_queue_delay_microseconds: \d+\s+\}", config)
    assert config.count("{") == config.count("}") and config.count("[") == config.count("]")
    assert (folder / "labels.txt").read_text().splitlines() == list(LABELS)


def test_export_cli_reports_its_check_and_refuses_nothing_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--triton alone exports into the repository and prints the onnxruntime check; without
    --onnx or --triton the command ends with status 2."""
    bundle = small_bundle(tmp_path / "b", channels=1)
    assert _export(str(bundle.path), "--triton", str(tmp_path / "t"), "--max-batch", "64") == 0
    printed = capsys.readouterr().out
    assert "within 1e-4" in printed
    config = (tmp_path / "t" / "small-cxr" / "config.pbtxt").read_text()
    assert "max_batch_size: 64" in config and "dims: [ 1, 64, 64 ]" in config
    assert _export(str(bundle.path)) == 2

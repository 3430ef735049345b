"""`dicom-node bundle import`: a torchvision-layout DenseNet checkpoint (CheXNet reimplementations)
becomes a bundle whose network gives the checkpoint's logits, with the labels, input size and
normalisation it was trained with and an identity from its weights."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet, DenseNet121

from dicom_node.cli import bundles
from dicom_node.model.bundle import METADATA, BundleError, load_bundle, sha256_file
from dicom_node.model.bundle_import import (
    IMAGENET,
    ImportRequest,
    Normalisation,
    import_checkpoint,
    monai_key,
)
from dicom_node.model.infer import Classifier
from dicom_node.model.preprocess import InputSpec, prepare
from dicom_node.training.datasets import CXR14_LABELS

SIZE = 64


def torchvision_key(key: str, *, old_names: bool, head: str, prefix: str) -> str:
    """MONAI's DenseNet key as torchvision names it (the inverse of the importer's renaming)."""
    key = key.replace("class_layers.out.", f"{head}.").replace(".layers.", ".")
    if old_names:
        key = re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)
    return prefix + key


def torchvision_checkpoint(
    net: torch.nn.Module,
    path: Path,
    *,
    old_names: bool = True,
    head: str = "classifier.0",
    prefix: str = "module.densenet121.",
) -> Path:
    """`net`'s weights as a CheXNet reimplementation saves them: DataParallel and wrapper
    prefixes, torchvision names, no BatchNorm counters, inside a training checkpoint."""
    state = {
        torchvision_key(k, old_names=old_names, head=head, prefix=prefix): v
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    torch.save({"epoch": 7, "arch": "densenet121", "best_loss": 0.15, "state_dict": state}, path)
    return path


def _trained_like(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BatchNorm statistics, so that running means and variances must land right."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=gen) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
    return net.eval()


def _import(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    bundles.configure_bundle(parser)
    args = parser.parse_args(["import", *argv])
    return int(args.func(args))


@pytest.fixture(scope="module")
def chexnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return _trained_like(DenseNet121(spatial_dims=2, in_channels=3, out_channels=14))


def tiny_densenet(in_channels: int = 3, out_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(1)
    net = DenseNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        init_features=8,
        growth_rate=4,
        bn_size=2,
        block_config=(2, 2),
    )
    return _trained_like(net, seed=1)


def test_keys_are_renamed_as_torchvision_names_them() -> None:
    """Prefixes go, old `norm.1` names become `norm1`, dense layers get MONAI's `layers.`, both
    head spellings become `class_layers.out`; transitions and norm5 keep their names."""
    cases = {
        "module.densenet121.features.conv0.weight": "features.conv0.weight",
        "features.denseblock1.denselayer1.norm.1.weight": (
            "features.denseblock1.denselayer1.layers.norm1.weight"
        ),
        "densenet121.features.denseblock4.denselayer16.conv.2.weight": (
            "features.denseblock4.denselayer16.layers.conv2.weight"
        ),
        "features.denseblock2.denselayer3.norm2.running_var": (
            "features.denseblock2.denselayer3.layers.norm2.running_var"
        ),
        "features.transition1.norm.weight": "features.transition1.norm.weight",
        "module.features.norm5.bias": "features.norm5.bias",
        "module.densenet121.classifier.0.weight": "class_layers.out.weight",
        "classifier.bias": "class_layers.out.bias",
        "features.denseblock1.denselayer1.layers.norm1.weight": (
            "features.denseblock1.denselayer1.layers.norm1.weight"  # MONAI's own layout
        ),
    }
    assert {k: monai_key(k) for k in cases} == cases


def test_imported_densenet121_gives_the_checkpoints_logits(
    chexnet: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DenseNet121 checkpoint in CheXNet's layout, imported with the NIH-14 labels at 64 px,
    gives the same logits as the network it came from (within 1e-5); its identity comes from
    the weights, its metadata names the source file's SHA-256."""
    checkpoint = torchvision_checkpoint(chexnet, tmp_path / "model.pth.tar")
    out = tmp_path / "chexnet"
    status = _import(
        str(checkpoint),
        "--out",
        str(out),
        "--input-size",
        str(SIZE),
        "--mean",
        "0.5",
        "--std",
        "0.25",
    )
    assert status == 0, capsys.readouterr().err
    bundle = load_bundle(out)
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = chexnet(x)
        got = bundle.build_network("cpu")(x)
    assert float((got - expected).abs().max()) < 1e-5
    probs = Classifier(bundle, torch.device("cpu")).predict(x)
    assert np.abs(probs - torch.sigmoid(expected).numpy()).max() < 1e-5
    assert bundle.labels == CXR14_LABELS and bundle.network_name == "DenseNet121"
    assert (bundle.input_size, bundle.in_channels, bundle.mean, bundle.std) == (SIZE, 3, 0.5, 0.25)
    source_sha = sha256_file(checkpoint)
    assert bundle.identity.version == f"1.0.0+{source_sha[:12]}"
    assert bundle.identity.name == "model-densenet121"
    section = json.loads((out / METADATA).read_text())["dicom_node"]
    assert section["source_checkpoint"]["sha256"] == source_sha
    assert "--calibrate" in section["threshold_method"] and set(bundle.thresholds) == {0.5}
    assert "weights SHA-256" in capsys.readouterr().out


def test_generic_densenet_and_plain_head(tmp_path: Path) -> None:
    """A non-standard DenseNet (two blocks) with `classifier.weight` and only a `densenet121.`
    prefix is rebuilt as MONAI's generic DenseNet; importing twice gives the same identity."""
    net = tiny_densenet(in_channels=1)
    checkpoint = torchvision_checkpoint(
        net, tmp_path / "tiny.pth", old_names=False, head="classifier", prefix="densenet121."
    )
    labels = ("Atelectasis", "Cardiomegaly", "Effusion")
    request = ImportRequest(
        labels=labels, input_size=SIZE, normalisation=Normalisation(mean=(0.4,), std=(0.3,))
    )
    first = import_checkpoint(checkpoint, tmp_path / "a", request)
    again = import_checkpoint(checkpoint, tmp_path / "b", request)
    assert first.network_name == "DenseNet" and first.network_kwargs["block_config"] == [2, 2]
    assert first.identity.weights_sha256 == again.identity.weights_sha256
    assert first.identity.version == again.identity.version
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(first.build_network("cpu")(x), net(x), atol=1e-5)


def test_imagenet_normalisation_is_applied_per_channel_exactly(tmp_path: Path) -> None:
    """ImageNet's per-channel mean/std (the default) is kept per channel: the node's input is
    the grey image in three channels each normalised with its own values, the weights are the
    checkpoint's, and the logits equal the original network's on that input everywhere
    (within 1e-5)."""
    net = tiny_densenet()
    checkpoint = torchvision_checkpoint(net, tmp_path / "imagenet.pth")
    bundle = import_checkpoint(
        checkpoint, tmp_path / "b", ImportRequest(labels=CXR14_LABELS[:3], input_size=SIZE)
    )
    section = json.loads((tmp_path / "b" / METADATA).read_text())["dicom_node"]
    assert section["trained_intensity"] == {"mean": list(IMAGENET.mean), "std": list(IMAGENET.std)}
    assert section["intensity"] == {"mean": list(IMAGENET.mean), "std": list(IMAGENET.std)}
    assert (bundle.mean, bundle.std) == (IMAGENET.mean, IMAGENET.std)
    image = np.linspace(0, 1, 80 * 70, dtype=np.float32).reshape(80, 70) ** 2
    node_input, _ = prepare(image, bundle.input_spec)
    raw, _ = prepare(image, InputSpec(size=SIZE, mean=0.0, std=1.0, channels=3))
    mean = torch.tensor(IMAGENET.mean).view(3, 1, 1)
    exact = (raw - mean) / torch.tensor(IMAGENET.std).view(3, 1, 1)
    assert float((node_input - exact).abs().max()) < 1e-6
    with torch.no_grad():
        got = bundle.build_network("cpu")(node_input[None])
        want = net(exact[None])
    assert float((got - want).abs().max()) < 1e-5


@pytest.mark.parametrize(
    ("channels", "argv", "message"),
    [
        (3, ["--labels", "Atelectasis,Cardiomegaly"], "3 outputs but 2 labels"),
        (1, ["--labels", ",".join(CXR14_LABELS[:3])], "3 mean/std values"),  # ImageNet's, grey
    ],
)
def test_import_refuses_what_it_cannot_name(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    channels: int,
    argv: list[str],
    message: str,
) -> None:
    """Too few labels, or per-channel values for a grey network, end with status 2 and the
    reason; nothing is written."""
    checkpoint = torchvision_checkpoint(tiny_densenet(in_channels=channels), tmp_path / "c.pth")
    status = _import(str(checkpoint), "--out", str(tmp_path / "b"), *argv)
    assert status == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_label_without_a_code_is_refused(tmp_path: Path) -> None:
    """Every label needs a coded concept before anything is written."""
    checkpoint = torchvision_checkpoint(tiny_densenet(), tmp_path / "c.pth")
    request = ImportRequest(labels=("Atelectasis", "Cardiomegaly", "Lung Thing"))
    with pytest.raises(BundleError, match=r"structured_reports/codes\.py"):
        import_checkpoint(checkpoint, tmp_path / "b", request)
    assert not (tmp_path / "b").exists()


def test_a_pickled_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A whole pickled model (code, not a state_dict) is never unpickled."""
    path = tmp_path / "whole.pth"
    torch.save(tiny_densenet(), path)
    assert _import(str(path), "--out", str(tmp_path / "b")) == 2
    assert "state_dict" in capsys.readouterr().err

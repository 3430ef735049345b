"""MONAI bundle loading: the demo bundle, its model card, and errors that name file and key."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dicom_node.model.bundle import (
    INFERENCE,
    METADATA,
    WEIGHTS,
    Bundle,
    BundleError,
    code_entry,
    instantiate_network,
    load_bundle,
)
from dicom_node.model.infer import Classifier
from dicom_node.model.preprocess import render_for_display, to_model_input
from dicom_node.synthetic.phantom_dicom import phantom_dataset
from dicom_node.synthetic.phantoms import LABELS, make_phantom
from dicom_node.testing import DEMO_BUNDLE, TINY_LABELS
from dicom_node.testing import tiny_bundle as make_tiny_bundle

Doc = dict[str, Any]


def tiny_bundle(path: Path) -> Bundle:
    """The shared tiny bundle (dicom_node.testing)."""
    return make_tiny_bundle(path, labels=TINY_LABELS)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template")
    tiny_bundle(path)
    return path


# ---- the demo bundle ----------------------------------------------------------------------


def test_demo_bundle_loads_with_its_model_card() -> None:
    """The shipped demo bundle validates; its identity carries name, version, weights hash."""
    bundle = load_bundle(DEMO_BUNDLE)
    digest = hashlib.sha256((DEMO_BUNDLE / WEIGHTS).read_bytes()).hexdigest()
    assert bundle.identity.name == "cxr14-densenet121-demo"
    assert bundle.identity.version == "0.2.0"
    assert bundle.identity.weights_sha256 == digest
    assert bundle.identity.synthetic_demo is True
    assert bundle.labels == LABELS and len(bundle.thresholds) == len(LABELS)
    assert all(0.0 < t < 1.0 for t in bundle.thresholds)
    assert bundle.in_channels == 1 and bundle.input_size >= 64
    assert (DEMO_BUNDLE / "LICENSE").is_file() and (DEMO_BUNDLE / "README.md").is_file()


def test_demo_bundle_files_are_small_and_documented() -> None:
    """Weights stay within 30 MB; metadata.json records synthetic training and its metrics."""
    assert (DEMO_BUNDLE / WEIGHTS).stat().st_size <= 30_000_000
    meta = json.loads((DEMO_BUNDLE / METADATA).read_text())
    section = meta["dicom_node"]
    assert "synthetic" in section["training_data"]
    assert section["validation_metrics"]["mean_auroc"] > 0.75
    for key in (
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "name",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
    ):
        assert key in meta, key


def test_demo_model_sees_its_best_finding_through_the_dicom_path() -> None:
    """DICOM phantom -> display -> model input -> demo network: positives score above negatives
    for the label the bundle validated best (the inference path matches the training path)."""
    bundle = load_bundle(DEMO_BUNDLE)
    aurocs = json.loads((DEMO_BUNDLE / METADATA).read_text())["dicom_node"]["validation_metrics"]
    best = max(LABELS, key=lambda label: aurocs["labels"][label]["auroc"] or 0.0)
    clf = Classifier(bundle, torch.device("cpu"))
    rng = np.random.default_rng(11)
    inputs = []
    for findings in ([best], [best], [best], [], [], []):
        phantom = make_phantom(rng, findings=findings, size=(256, 256))
        ds = phantom_dataset(phantom, patient_id="P", patient_name="A^B", study_uid="1.2.3")
        x, _ = to_model_input(
            render_for_display(ds), size=bundle.input_size, mean=bundle.mean, std=bundle.std
        )
        inputs.append(x)
    probs = clf.predict(torch.stack(inputs))[:, LABELS.index(best)]
    assert probs[:3].min() > probs[3:].max(), probs


# ---- a bundle built in the test -----------------------------------------------------------


def test_weights_load_in_eval_mode_and_fp16_is_cast(template: Path, tmp_path: Path) -> None:
    """build_network loads the weights in eval mode; an fp16 state_dict is cast to fp32."""
    bundle = load_bundle(template)
    net = bundle.build_network("cpu")
    assert not net.training
    saved = torch.load(template / WEIGHTS, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    shutil.copytree(template, tmp_path / "half")
    half = {k: v.half() if v.is_floating_point() else v for k, v in saved.items()}
    torch.save(half, tmp_path / "half" / WEIGHTS)
    half_net = load_bundle(tmp_path / "half").build_network("cpu")
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), half_net(x), atol=5e-2)
        assert next(half_net.parameters()).dtype == torch.float32


def _edit(doc_path: Path, change: Callable[[Doc], None]) -> None:
    doc = json.loads(doc_path.read_text())
    change(doc)
    doc_path.write_text(json.dumps(doc))


def _codes(**changes: Doc) -> Doc:
    return {label: changes.get(label, code_entry(label)) for label in TINY_LABELS}


def _thresholds(doc: Doc) -> Doc:
    thresholds: Doc = doc["dicom_node"]["thresholds"]
    return thresholds


METADATA_CASES: list[tuple[str, Callable[[Doc], None], str]] = [
    ("no version", lambda d: d.pop("version"), "'version' missing"),
    ("no labels", lambda d: d["dicom_node"].pop("labels"), "'dicom_node.labels' missing"),
    (
        "bad threshold",
        lambda d: _thresholds(d).update(Effusion=1.5),
        "'dicom_node.thresholds.Effusion'",
    ),
    ("threshold gone", lambda d: _thresholds(d).pop("Effusion"), "'dicom_node.thresholds' keys"),
    ("size as text", lambda d: d["dicom_node"].update(input_size="64"), "'dicom_node.input_size'"),
    (
        "zero std",
        lambda d: d["dicom_node"]["intensity"].update(std=0),
        "'dicom_node.intensity.std'",
    ),
    (
        "flag as text",
        lambda d: d["dicom_node"].update(synthetic_demo="yes"),
        "'dicom_node.synthetic_demo'",
    ),
    ("no section and no channel_def", lambda d: d.pop("dicom_node"), "'dicom_node.labels' missing"),
    (
        "uncoded label",
        lambda d: d["dicom_node"].update(
            labels=["Atelectasis", "Cardiomegaly", "Lung Nodule"],
            thresholds={"Atelectasis": 0.5, "Cardiomegaly": 0.5, "Lung Nodule": 0.5},
        ),
        "without a coded concept: ['Lung Nodule']",
    ),
    (
        "wrong code",
        lambda d: d["dicom_node"].update(codes=_codes(Effusion={"value": "1", "scheme": "SCT"})),
        "'dicom_node.codes.Effusion'",
    ),
    (
        "codes incomplete",
        lambda d: d["dicom_node"].update(codes={"Effusion": code_entry("Effusion")}),
        "'dicom_node.codes' keys differ",
    ),
]
INFERENCE_CASES: list[tuple[str, Callable[[Doc], None], str]] = [
    (
        "network not on the allow-list",
        lambda d: d["network_def"].update(_target_="monai.networks.nets.UNet"),
        "'network_def._target_' 'monai.networks.nets.UNet' is not allowed",
    ),
    (
        "wrong outputs",
        lambda d: d["network_def"].update(out_channels=5),
        "'network_def.out_channels'",
    ),
    ("pretrained", lambda d: d["network_def"].update(pretrained=True), "'network_def.pretrained'"),
    ("unknown argument", lambda d: d["network_def"].update(foo=1), "'network_def.foo'"),
    ("expression", lambda d: d["network_def"].update(bn_size="$4"), "'network_def.bn_size'"),
    ("no network", lambda d: d.pop("network_def"), "'network_def' missing"),
    (
        "block_config of a DenseNet121",
        lambda d: d["network_def"].update(block_config=[2, 2]),
        "'network_def.block_config' is fixed",
    ),
    (
        "bad block_config",
        lambda d: d["network_def"].update(
            _target_="monai.networks.nets.DenseNet", block_config=[0]
        ),
        "'network_def.block_config' must be",
    ),
]


@pytest.mark.parametrize(
    ("name", "change", "key"), METADATA_CASES, ids=[c[0] for c in METADATA_CASES]
)
def test_bad_metadata_names_file_and_key(
    template: Path, tmp_path: Path, name: str, change: Callable[[Doc], None], key: str
) -> None:
    """Each broken metadata.json entry is reported with the file and the key."""
    bad = tmp_path / "bad"
    shutil.copytree(template, bad)
    _edit(bad / METADATA, change)
    with pytest.raises(BundleError, match=r"metadata\.json") as info:
        load_bundle(bad)
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("name", "change", "key"), INFERENCE_CASES, ids=[c[0] for c in INFERENCE_CASES]
)
def test_bad_network_definition_names_file_and_key(
    template: Path, tmp_path: Path, name: str, change: Callable[[Doc], None], key: str
) -> None:
    """Each broken inference.json network_def entry is reported with the file and the key."""
    bad = tmp_path / "bad"
    shutil.copytree(template, bad)
    _edit(bad / INFERENCE, change)
    with pytest.raises(BundleError, match=r"inference\.json") as info:
        load_bundle(bad)
    assert key in str(info.value)


@pytest.mark.parametrize("missing", ["LICENSE", "models/model.pt", "configs/metadata.json"])
def test_missing_files_are_named(template: Path, tmp_path: Path, missing: str) -> None:
    """A bundle without its licence, weights or metadata is refused, naming the file."""
    bad = tmp_path / "bad"
    shutil.copytree(template, bad)
    (bad / missing).unlink()
    with pytest.raises(BundleError, match=re.escape(missing.rsplit("/", maxsplit=1)[-1])):
        load_bundle(bad)


def test_invalid_json_and_mismatched_weights(template: Path, tmp_path: Path) -> None:
    """Unparsable JSON names the file; weights of another network fail when building it."""
    bad = tmp_path / "bad"
    shutil.copytree(template, bad)
    (bad / METADATA).write_text("{not json")
    with pytest.raises(BundleError, match=r"metadata\.json: not valid JSON"):
        load_bundle(bad)
    shutil.rmtree(bad)
    shutil.copytree(template, bad)
    other = instantiate_network(
        "DenseNet121", {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "init_features": 16}
    )
    torch.save(other.state_dict(), bad / WEIGHTS)
    with pytest.raises(BundleError, match=r"model\.pt: weights do not fit"):
        load_bundle(bad).build_network("cpu")


def test_codes_and_small_densenet(template: Path, tmp_path: Path) -> None:
    """A bundle's labels carry their curated codes; a codes table that agrees is accepted; the
    generic DenseNet with a short block_config (small test models) loads and runs."""
    bundle = load_bundle(template)
    assert [c.value for c in bundle.codes] == ["46621007", "8186001", "60046008"]
    good = tmp_path / "good"
    shutil.copytree(template, good)
    _edit(good / METADATA, lambda d: d["dicom_node"].update(codes=_codes()))
    assert load_bundle(good).labels == TINY_LABELS
    _edit(
        good / INFERENCE,
        lambda d: d["network_def"].update(
            _target_="monai.networks.nets.DenseNet", block_config=[2, 2]
        ),
    )
    net = instantiate_network(
        "DenseNet",
        {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 3,
            "init_features": 8,
            "growth_rate": 4,
            "bn_size": 2,
            "block_config": [2, 2],
        },
    )
    torch.save(net.state_dict(), good / WEIGHTS)
    small = load_bundle(good)
    assert small.network_name == "DenseNet" and small.input_spec.size == 64
    with torch.no_grad():
        assert small.build_network("cpu")(torch.zeros(1, 1, 64, 64)).shape == (1, 3)

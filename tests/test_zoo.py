"""MONAI model-zoo bundles: other MONAI classifiers, the bundle's own preprocessing applied as
declared, an allow-list of what a config may instantiate, and a ResNet bundle served end to end."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.visualize.class_activation_maps import GradCAM
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.model import networks, zoo
from dicom_node.model.bundle import BundleError, load_bundle
from dicom_node.model.explain import map_to_display, maps_from_features, upsample_maps
from dicom_node.model.infer import Classifier
from dicom_node.model.preprocess import prepare
from dicom_node.node import Node
from dicom_node.store.jobs import wait_finished
from dicom_node.testing import node_settings
from dicom_node.training.datasets import CXR14_LABELS as NIH_LABELS
from tests.conftest import chest_image
from tests.peers import StoreSCP, storescu
from tests.test_pipeline import _results_of
from tests.test_sr_content import named

CPU = torch.device("cpu")
Doc = dict[str, Any]
RESNET = {
    "_target_": "ResNet",
    "block": "basic",
    "layers": [1, 1, 1, 1],
    "block_inplanes": [8, 16, 32, 64],
    "spatial_dims": 2,
    "n_input_channels": 1,
    "num_classes": len(NIH_LABELS),
}
STRETCH = [
    {"_target_": "LoadImaged", "keys": "image", "image_only": True},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Resized", "keys": "image", "spatial_size": [64, 64], "mode": "bilinear"},
    {"_target_": "ScaleIntensityd", "keys": "image"},
    {"_target_": "CastToTyped", "keys": "image", "dtype": "$torch.float32"},
    {"_target_": "EnsureTyped", "keys": "image"},
]
LETTERBOX = [
    {"_target_": "LoadImaged", "keys": "@image_key", "image_only": True},
    {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
    {"_target_": "Resized", "keys": "@image_key", "spatial_size": 64, "size_mode": "longest"},
    {"_target_": "SpatialPadd", "keys": "@image_key", "spatial_size": [64, 64]},
    {"_target_": "NormalizeIntensityd", "keys": "@image_key"},
]


def zoo_inference(network: Doc, transforms: list[Doc]) -> Doc:
    """An inference.json as the MONAI model zoo writes them: imports, paths and an evaluator
    built from expressions (which the node never evaluates), the network, pre- and
    postprocessing."""
    return {
        "imports": ["$import glob", "$import os", "$import torch"],
        "bundle_root": "/workspace/bundle",
        "image_key": "image",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "dataset": {"_target_": "Dataset", "data": "$[]", "transform": "@preprocessing"},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.4},
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@bundle_root + '/models/model.pt'",
                "load_dict": {"model": "@network"},
            }
        ],
        "evaluating": ["$@evaluator.run()"],
    }


def zoo_metadata(labels: tuple[str, ...] = NIH_LABELS) -> Doc:
    """A metadata.json of the MONAI model-zoo schema, without any section of the node's."""
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": "0.3.1",
        "changelog": {"0.3.1": "test bundle"},
        "monai_version": "1.3.0",
        "pytorch_version": "2.1.0",
        "numpy_version": "1.24.0",
        "name": "cxr-resnet-zoo",
        "task": "Chest X-ray classification",
        "description": "A ResNet bundle in the model-zoo layout (random weights, for tests)",
        "authors": "dicom-node tests",
        "copyright": "none",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [64, 64]}},
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "num_channels": len(labels),
                    "channel_def": {str(i): label for i, label in enumerate(labels)},
                }
            },
        },
    }


def write_zoo_bundle(
    path: Path, network: Doc = RESNET, transforms: list[Doc] = STRETCH, seed: int = 0
) -> Path:
    """A bundle folder in the model-zoo layout (configs/, models/model.pt, docs/, LICENSE)."""
    (path / "configs").mkdir(parents=True)
    (path / "models").mkdir()
    (path / "docs").mkdir()
    (path / "configs" / "metadata.json").write_text(json.dumps(zoo_metadata(), indent=2))
    (path / "configs" / "inference.json").write_text(
        json.dumps(zoo_inference(network, transforms), indent=2)
    )
    torch.manual_seed(seed)
    net = zoo.instantiate(zoo.check_component(network, "network_def"))
    torch.save(net.state_dict(), path / "models" / "model.pt")
    (path / "docs" / "README.md").write_text("test bundle\n")
    (path / "LICENSE").write_text("test only\n")
    return path


def _edit(path: Path, change: Callable[[Doc], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


# ---- networks ---------------------------------------------------------------------------------

FAMILIES: dict[str, Doc] = {
    "densenet": {
        "_target_": "DenseNet",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 3,
        "init_features": 8,
        "growth_rate": 4,
        "block_config": [2, 2],
    },
    "resnet": {**RESNET, "num_classes": 3},
    "seresnet50": {"_target_": "SEResNet50", "spatial_dims": 2, "in_channels": 3, "num_classes": 3},
    "efficientnet-b0": {
        "_target_": "EfficientNetBN",
        "model_name": "efficientnet-b0",
        "spatial_dims": 2,
        "in_channels": 1,
        "num_classes": 3,
    },
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_trunk_then_head_computes_what_the_network_does(family: str) -> None:
    """For every allowed network family, the split at the Grad-CAM layer gives the logits of
    the network's own forward (within 1e-5), with a linear head the fast CAM path reads; a
    network that would download weights by default (EfficientNetBN) is built without them."""
    torch.manual_seed(0)
    network = FAMILIES[family]
    net = zoo.instantiate(zoo.check_component(network, "network_def")).eval()
    channels = networks.in_channels(net)
    x = torch.randn(2, channels, 64, 64)
    parts = networks.split(net)
    with torch.no_grad():
        whole = net(x)
        split = parts.head(parts.trunk(x))
    assert torch.allclose(whole, split, atol=1e-5)
    assert isinstance(parts.head[-1], torch.nn.Linear) and parts.head[-1].out_features == 3


def test_resnet_gradcam_is_monai_gradcam_at_layer4(tmp_path: Path) -> None:
    """The maps of a ResNet bundle (one product from layer4's maps) equal MONAI GradCAM on the
    whole network at layer4, class by class, within 1e-5."""
    bundle = load_bundle(write_zoo_bundle(tmp_path / "zoo"))
    clf = Classifier(bundle, CPU)
    torch.manual_seed(3)
    batch = torch.randn(2, 1, 64, 64)
    features = clf.features(batch)
    ours = maps_from_features(clf, features, [[0, 5], [5]], size=64)
    net = copy.deepcopy(clf.network)
    cam = GradCAM(
        nn_module=net,
        target_layers="layer4",
        upsampler=lambda _size: lambda x: x,
        postprocessing=lambda x: x,
    )
    for cls, rows in ((0, [0]), (5, [0, 1])):
        raw = cam(batch.clone().requires_grad_(True), class_idx=cls).detach()
        expected = upsample_maps(raw, 64, None)
        for i in rows:
            assert np.abs(ours[i][cls] - expected[i]).max() < 1e-5


# ---- loading and preprocessing ----------------------------------------------------------------


def _display(shape: tuple[int, int] = (96, 80)) -> np.ndarray:
    """A display image (H, W) with a bright patch near the top left and a dimmer one lower
    right, on a gradient (8-bit levels in [0, 1]): a transposed or shifted map would miss them."""
    image = np.tile(np.linspace(40.0, 90.0, shape[1], dtype=np.float32), (shape[0], 1))
    image[10:24, 8:20] = 250.0
    image[60:80, 50:70] = 150.0
    return np.rint(image) / 255.0


def test_zoo_bundle_is_read_with_its_labels_threshold_and_preprocessing(tmp_path: Path) -> None:
    """A model-zoo bundle without the node's section loads: labels from channel_def, the
    threshold from its AsDiscreted, its own preprocessing; and the node's input is exactly what
    MONAI's whole preprocessing makes of the same image saved as an 8-bit PNG."""
    bundle = load_bundle(write_zoo_bundle(tmp_path / "zoo"))
    assert bundle.labels == NIH_LABELS
    assert bundle.thresholds == (0.4,) * len(NIH_LABELS)
    assert bundle.identity.name == "cxr-resnet-zoo" and not bundle.identity.synthetic_demo
    assert bundle.pipeline is not None and bundle.input_size == 64 and bundle.in_channels == 1
    display = _display()
    ours, box = prepare(display, bundle.input_spec)
    png = tmp_path / "image.png"
    Image.fromarray(np.rint(display * 255).astype(np.uint8)).save(png)
    monai = ConfigParser({"pre": {"_target_": "Compose", "transforms": STRETCH}, "imports": []})
    monai["pre"]["transforms"][4]["dtype"] = "$torch.float32"
    expected = monai.get_parsed_content("pre")({"image": str(png)})["image"]
    assert ours.shape == (1, 64, 64) and box.transposed
    assert torch.allclose(ours, torch.as_tensor(expected).float(), atol=1e-5)


@pytest.mark.parametrize("transforms", [STRETCH, LETTERBOX], ids=["stretch", "letterbox"])
def test_maps_return_to_the_place_they_came_from(tmp_path: Path, transforms: list[Doc]) -> None:
    """A map equal to the model input (transposed, stretched or letterboxed as the bundle
    declares) lands back on the display image's bright patch."""
    bundle = load_bundle(write_zoo_bundle(tmp_path / "zoo", transforms=transforms))
    display = _display()
    model_input, box = prepare(display, bundle.input_spec)
    cam = model_input[0].numpy()
    cam = (cam - cam.min()) / (cam.max() - cam.min())
    shown = map_to_display(cam.astype(np.float32), box, display.shape)
    assert shown.shape == display.shape
    y, x = np.unravel_index(np.argmax(shown), shown.shape)
    assert 8 <= y < 26 and 6 <= x < 22
    assert np.corrcoef(shown.ravel(), display.ravel())[0, 1] > 0.9


REFUSED: list[tuple[str, Callable[[Doc], None], str]] = [
    (
        "unlisted network",
        lambda d: d["network_def"].update(_target_="torch.nn.Linear"),
        "'network_def._target_' 'torch.nn.Linear' is not allowed",
    ),
    (
        "code in an argument",
        lambda d: d["network_def"].update(num_classes="$__import__('os').getpid()"),
        "'network_def.num_classes' is an expression",
    ),
    (
        "unlisted transform",
        lambda d: d["preprocessing"]["transforms"].insert(
            2, {"_target_": "Lambdad", "keys": "image", "func": "$lambda x: x"}
        ),
        "'Lambdad' is not allowed",
    ),
    (
        "random flip",
        lambda d: d["preprocessing"]["transforms"].insert(
            2, {"_target_": "RandFlipd", "keys": "image", "prob": 0.5}
        ),
        "'RandFlipd' is not allowed",
    ),
    (
        "softmax",
        lambda d: d["postprocessing"]["transforms"][0].update(sigmoid=False, softmax=True),
        "the node applies a sigmoid per label only",
    ),
    (
        "argmax",
        lambda d: d["postprocessing"]["transforms"][1].update(argmax=True),
        "no argmax",
    ),
    (
        "no loader",
        lambda d: d["preprocessing"]["transforms"].pop(0),
        "must begin with LoadImage(d)",
    ),
    (
        "not square",
        lambda d: d["preprocessing"]["transforms"][2].update(spatial_size=[64, 48]),
        "needs a square input",
    ),
    (
        "label key",
        lambda d: d["preprocessing"]["transforms"][3].update(keys=["image", "label"]),
        "only the image key",
    ),
]


@pytest.mark.parametrize(("name", "change", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_what_the_node_would_not_apply_is_refused_by_name(
    tmp_path: Path, name: str, change: Callable[[Doc], None], message: str
) -> None:
    """A config asking for an unlisted `_target_`, an expression, or a pre- or postprocessing
    step the node would not apply faithfully is refused, the message naming it."""
    path = write_zoo_bundle(tmp_path / "zoo")
    _edit(path / "configs" / "inference.json", change)
    with pytest.raises(BundleError, match=r"inference\.json") as info:
        load_bundle(path)
    assert message in str(info.value)


# ---- served end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    with StoreSCP(tmp_path_factory.mktemp("pacs"), aet="PACS") as scp:
        yield scp


@pytest.mark.integration
def test_a_resnet_zoo_bundle_serves_through_the_node(tmp_path: Path, pacs: StoreSCP) -> None:
    """A model-zoo ResNet bundle behind a real node: a frontal chest DX sent by DCMTK storescu
    comes back as an SR naming that model, with 14 findings at the bundle's threshold, and a
    Grad-CAM SC of the source image."""
    bundle_path = write_zoo_bundle(tmp_path / "zoo")
    destination = {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}
    settings = node_settings(
        tmp_path / "node",
        model_bundle=bundle_path,
        destinations=[destination],
    )
    study_uid = generate_uid()
    path = tmp_path / "image.dcm"
    chest_image(study_uid=study_uid).save_as(path, enforce_file_format=True)
    with Node(settings) as node:
        storescu([path], port=node.port, aet=settings.ae_title)
        job = wait_finished(node.sessions, study_uid, timeout=60)
        assert job.state == "done", job.detail
        results = _results_of(pacs, study_uid, 2)
    sr, sc = results["SR"], results["OT"]
    groups = named(sr, "125007")  # TID 1501 measurement groups: one per finding
    assert len(groups) == len(NIH_LABELS)
    for group in groups:
        assert named(group, "111001")[0].TextValue == "cxr-resnet-zoo"
        assert named(group, "111003")[0].TextValue == "0.3.1"
        parameters = {p.TextValue for p in named(group, "111002")}
        assert "threshold=0.4" in parameters
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == dcmread(path).SOPInstanceUID


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dicom_node.cli", "bundle", "check", str(path)]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)


def test_bundle_check_says_how_a_zoo_bundle_is_served_or_why_not(tmp_path: Path) -> None:
    """`dicom-node bundle check` on a zoo bundle names its network, its own preprocessing and
    its scope (exit 0); on one asking for an unlisted `_target_` it exits 2 naming it."""
    path = write_zoo_bundle(tmp_path / "zoo")
    done = _check(path)
    assert done.returncode == 0, done.stderr
    assert "cxr-resnet-zoo 0.3.1: ResNet, 1 x 64 px" in done.stdout
    assert "Resized, ScaleIntensityd, CastToTyped, EnsureTyped" in done.stdout
    assert "views PA, AP" in done.stdout and "threshold 0.4" in done.stdout
    _edit(path / "configs" / "inference.json", REFUSED[0][1])
    done = _check(path)
    assert done.returncode == 2
    assert "'torch.nn.Linear' is not allowed" in done.stderr


def test_a_yaml_inference_config_is_read_like_json(tmp_path: Path) -> None:
    """A zoo bundle shipping configs/inference.yaml instead of .json loads the same way."""
    import yaml

    path = write_zoo_bundle(tmp_path / "zoo")
    config = json.loads((path / "configs" / "inference.json").read_text())
    (path / "configs" / "inference.json").unlink()
    (path / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    bundle = load_bundle(path)
    assert bundle.network_name == "ResNet" and bundle.pipeline is not None
    assert bundle.thresholds == (0.4,) * len(NIH_LABELS)


def test_a_decode_pool_applies_the_bundles_preprocessing_as_the_worker_thread(
    tmp_path: Path,
) -> None:
    """With decoding processes (spawned: the pipeline travels pickled and is built there), a
    zoo bundle's input and geometry equal those made in the worker thread."""
    from dicom_node.model.decode_pool import DecodePool, prepare_files

    bundle = load_bundle(write_zoo_bundle(tmp_path / "zoo", transforms=LETTERBOX))
    path = tmp_path / "image.dcm"
    chest_image(study_uid=generate_uid(), size=(300, 240)).save_as(path, enforce_file_format=True)
    [here] = prepare_files([path], bundle.input_spec, 256, None)
    pool = DecodePool(1)
    try:
        [there] = prepare_files([path], bundle.input_spec, 256, pool)
    finally:
        pool.close()
    assert not isinstance(here, Exception) and not isinstance(there, Exception)
    assert here.model_input.shape == (1, 64, 64)
    assert np.array_equal(here.model_input, there.model_input)
    assert here.letterbox == there.letterbox and here.letterbox.transposed


def test_a_preprocessing_that_fails_on_an_image_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    """A declared pipeline whose output does not fit the network (three channels for a
    one-channel ResNet) raises PreprocessError naming the shapes: the worker skips that image
    with the reason instead of failing the study."""
    from dicom_node.errors import PreprocessError

    repeat = {"_target_": "RepeatChanneld", "keys": "image", "repeats": 3}
    bundle = load_bundle(write_zoo_bundle(tmp_path / "zoo", transforms=[*STRETCH, repeat]))
    with pytest.raises(PreprocessError, match=r"gave shape \(3, 64, 64\), not \(1, 64, 64\)"):
        prepare(_display(), bundle.input_spec)

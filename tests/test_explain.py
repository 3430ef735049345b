"""Grad-CAM maps (MONAI GradCAM at class_layers.relu) and their way back onto the display."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.visualize.class_activation_maps import GradCAM

from dicom_node.domain import Letterbox
from dicom_node.model.bundle import Bundle, instantiate_network
from dicom_node.model.explain import (
    CellGrid,
    _linear_head_weight,
    cell_grid,
    gradcam,
    map_to_display,
    upsample_maps,
)
from dicom_node.model.infer import Classifier
from dicom_node.model.preprocess import to_model_input
from dicom_node.testing import tiny_bundle as make_tiny_bundle

LABELS = ("Atelectasis", "Cardiomegaly", "Effusion")
SIZE = 96
CPU = torch.device("cpu")


def tiny_bundle(path: Path) -> Bundle:
    """The shared tiny bundle (dicom_node.testing) at this module's input size."""
    return make_tiny_bundle(path, labels=LABELS, input_size=SIZE)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    return Classifier(tiny_bundle(tmp_path_factory.mktemp("bundle")), CPU)


def _batch(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_maps_have_input_size_and_unit_range(classifier: Classifier) -> None:
    """Each requested class gets a float32 (S, S) map in [0, 1]; nothing else is computed."""
    maps = gradcam(classifier, _batch(3), [[0, 2], [], [1]])
    assert [sorted(m) for m in maps] == [[0, 2], [], [1]]
    for m in (maps[0][0], maps[0][2], maps[2][1]):
        assert m.shape == (SIZE, SIZE) and m.dtype == np.float32
        assert m.min() >= 0.0 and m.max() <= 1.0
        assert m.max() in (0.0, 1.0)  # normalised, or flat (no positive evidence)
    assert gradcam(classifier, _batch(2), [[], []]) == [{}, {}]


def _monai_gradcam(net: torch.nn.Module, batch: torch.Tensor, cls: int) -> list[np.ndarray]:
    """MONAI GradCAM through the whole network at class_layers.relu, its cell maps put on the
    input by the same resampling as ours."""
    reference = GradCAM(
        nn_module=copy.deepcopy(net),
        target_layers="class_layers.relu",
        upsampler=lambda _: lambda cells: cells,
        postprocessing=lambda x: x,
    )
    cells = reference(batch, class_idx=cls).detach()
    return upsample_maps(cells, batch.shape[-1], cell_grid(net))


def test_matches_monai_gradcam_on_the_whole_network(classifier: Classifier) -> None:
    """Explaining from the feature maps equals MONAI GradCAM run through the whole network."""
    batch = _batch(2, seed=3)
    ours = gradcam(classifier, batch, [[1], [1]])
    expected = _monai_gradcam(classifier.network, batch, 1)
    for i in range(2):
        assert np.abs(ours[i][1] - expected[i]).max() < 1e-5


def test_equals_the_class_activation_map(classifier: Classifier) -> None:
    """At class_layers.relu, Grad-CAM is the CAM: ReLU of the class weights times the features."""
    batch = _batch(1, seed=5)
    ours = gradcam(classifier, batch, [[2]])[0][2]
    net: Any = classifier.network  # a DenseNet: its submodules are attributes
    with torch.no_grad():
        features = torch.relu(net.features(batch))
        weights = net.class_layers.out.weight[2]
        cam = torch.relu(torch.einsum("k,nkhw->nhw", weights, features))[:, None]
    assert np.abs(ours - upsample_maps(cam, SIZE, cell_grid(net))[0]).max() < 1e-5


def test_peak_sits_on_a_synthetic_activation(classifier: Classifier) -> None:
    """With features = 8x8 average pooling, the map of a positive class peaks on a bright patch;
    a class with a negative weight has no positive evidence, so its map is all zeros."""
    net: Any = copy.deepcopy(classifier.network)
    net.features = torch.nn.AvgPool2d(8)
    net.class_layers.out = torch.nn.Linear(1, 3)
    with torch.no_grad():
        net.class_layers.out.weight.copy_(torch.tensor([[1.0], [-1.0], [0.5]]))
        net.class_layers.out.bias.zero_()
    clf = Classifier(classifier.bundle, CPU, network=net)
    image = torch.zeros(1, 1, SIZE, SIZE)
    image[0, 0, 56:64, 16:24] = 1.0  # one 8x8 cell of the 12x12 feature map
    maps = gradcam(clf, image, [[0, 1, 2]])[0]
    y, x = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert 56 <= y < 64 and 16 <= x < 24
    assert maps[0].max() == pytest.approx(1.0)
    assert np.all(maps[1] == 0.0)
    assert np.abs(maps[2] - maps[0]).max() < 1e-6


def _single_feature_classifier(classifier: Classifier, features: torch.nn.Module) -> Classifier:
    """The tiny bundle with `features` (one channel out) and a head that weighs it +1."""
    net: Any = copy.deepcopy(classifier.network)
    net.features = features
    net.class_layers.out = torch.nn.Linear(1, 3)
    with torch.no_grad():
        net.class_layers.out.weight.fill_(1.0)
        net.class_layers.out.bias.zero_()
    return Classifier(classifier.bundle, CPU, network=net)


def test_peak_between_two_cells_lands_between_them(classifier: Classifier) -> None:
    """A patch split evenly between two 8-pixel cells peaks on the border inside the patch, not
    on either cell's centre (where a bilinear resize would put it, outside the patch)."""
    clf = _single_feature_classifier(classifier, torch.nn.AvgPool2d(8))
    image = torch.zeros(1, 1, SIZE, SIZE)
    image[0, 0, 60:68, 36:44] = 1.0  # rows 60-67 straddle cells 7 (56-63) and 8 (64-71)
    cam = gradcam(clf, image, [[0]])[0][0]
    y, x = np.unravel_index(np.argmax(cam), cam.shape)
    assert y in (63, 64) and 36 <= x < 44


def test_cells_are_drawn_at_their_receptive_field_centres(classifier: Classifier) -> None:
    """With a DenseNet's stem and one transition (7x7 conv stride 2, 3x3 max pool stride 2, 2x2
    average pool), cell k sees input pixels 8k-2 ... 8k+6: one bright pixel at 8k+2 makes a
    map that peaks on that very pixel (a plain resize of the map would draw it at 8k+3.5)."""
    conv = torch.nn.Conv2d(1, 1, 7, stride=2, padding=3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 3, 3] = 1.0  # passes its centre pixel through
    stem = torch.nn.Sequential(conv, torch.nn.MaxPool2d(3, 2, 1), torch.nn.AvgPool2d(2, 2))
    assert cell_grid(torch.nn.Sequential()) is None
    clf = _single_feature_classifier(classifier, stem)
    assert cell_grid(clf.network) == CellGrid(stride=8, offset=2.0)
    image = torch.zeros(1, 1, SIZE, SIZE)
    image[0, 0, 8 * 5 + 2, 8 * 3 + 2] = 1.0
    cam = gradcam(clf, image, [[0]])[0][0]
    assert np.unravel_index(np.argmax(cam), cam.shape) == (42, 26)


def test_cell_grid_of_monai_densenets() -> None:
    """DenseNet121 (three transitions) draws 32-pixel cells centred at 32k+14; the two-block
    DenseNet of the convergence test 8-pixel cells at 8k+2: always 1.5 pixels up and left of a
    plain resize."""
    full = instantiate_network(
        "DenseNet121", {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}
    )
    small = instantiate_network(
        "DenseNet",
        {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "block_config": [4, 6]},
    )
    assert cell_grid(full) == CellGrid(stride=32, offset=14.0)
    assert cell_grid(small) == CellGrid(stride=8, offset=2.0)


def test_per_image_requests_match_single_image_runs(classifier: Classifier) -> None:
    """Images explained together give the same maps as each explained alone."""
    batch = _batch(3, seed=7)
    together = gradcam(classifier, batch, [[0], [0, 1], [1]])
    for i, wanted in enumerate([[0], [0, 1], [1]]):
        alone = gradcam(classifier, batch[i : i + 1], [wanted])[0]
        for cls in wanted:
            assert np.abs(alone[cls] - together[i][cls]).max() < 1e-5


def test_inference_network_untouched_and_inference_mode_allowed(classifier: Classifier) -> None:
    """Grad-CAM works inside torch.inference_mode, and the inference network keeps its inplace
    ReLU and gives the same predictions afterwards (no hooks left on it)."""
    batch = _batch(2, seed=9)
    before = classifier.predict(batch)
    with torch.inference_mode():
        maps = gradcam(classifier, batch, [[0], [1]])
    assert maps[0][0].shape == (SIZE, SIZE)
    relu: Any = classifier.network.get_submodule("class_layers.relu")
    assert relu.inplace and not relu._forward_hooks and not relu._backward_hooks
    assert np.array_equal(before, classifier.predict(batch))


def test_bad_requests_are_refused(classifier: Classifier) -> None:
    """One list of indices per image, each index a label index."""
    with pytest.raises(ValueError, match="lists of class indices"):
        gradcam(classifier, _batch(2), [[0]])
    with pytest.raises(ValueError, match="class indices must lie"):
        gradcam(classifier, _batch(1), [[3]])


def test_map_to_display_inverts_the_letterbox() -> None:
    """A smooth image letterboxed and mapped back lands where it came from, on the display."""
    yy, xx = np.mgrid[0:120, 0:60].astype(np.float32)
    image = 0.5 * yy / 119 + 0.5 * xx / 59
    x, box = to_model_input(image, size=64, mean=0.0, std=1.0)
    back = map_to_display(x[0].numpy(), box, (120, 60))
    assert back.shape == (120, 60) and back.dtype == np.float32
    assert np.abs(back - image).mean() < 0.01 and np.abs(back - image).max() < 0.05


def test_map_to_display_places_a_peak() -> None:
    """A peak at the centre of the content stays at the display's centre; pads are cropped."""
    box = Letterbox(scale=0.5, pad_top=0, pad_left=16, height=64, width=32, size=64)
    cam = np.zeros((64, 64), np.float32)
    cam[30:34, 30:34] = 1.0
    cam[:, :16] = 1.0  # padding: must not show
    shown = map_to_display(cam, box, (128, 64))
    y, x = np.unravel_index(np.argmax(shown), shown.shape)
    assert 58 <= y <= 69 and 26 <= x <= 37
    assert shown[:, :8].max() < 0.2
    with pytest.raises(ValueError, match="letterbox"):
        map_to_display(np.zeros((32, 32), np.float32), box, (128, 64))


def test_fast_path_is_used_and_other_heads_fall_back_to_monai(classifier: Classifier) -> None:
    """The DenseNet head takes the one-product path; a head with max pooling goes through MONAI
    GradCAM class by class, and still equals MONAI GradCAM on the whole network."""
    assert _linear_head_weight(classifier.parts.head) is not None
    net: Any = copy.deepcopy(classifier.network)
    net.class_layers.pool = torch.nn.AdaptiveMaxPool2d(1)
    clf = Classifier(classifier.bundle, CPU, network=net)
    assert _linear_head_weight(clf.parts.head) is None
    batch = _batch(2, seed=11)
    ours = gradcam(clf, batch, [[0, 2], [2]])
    for cls, rows in ((0, [0]), (2, [0, 1])):
        expected = _monai_gradcam(net, batch, cls)
        for i in rows:
            assert np.abs(ours[i][cls] - expected[i]).max() < 1e-5

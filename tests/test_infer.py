"""Device choice and batched sigmoid inference on a tiny randomly initialised DenseNet121."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dicom_node.model.bundle import Bundle
from dicom_node.model.infer import Classifier, resolve_device
from dicom_node.testing import TINY_LABELS
from dicom_node.testing import tiny_bundle as make_tiny_bundle

LABELS = TINY_LABELS
SIZE = 64


def tiny_bundle(path: Path, *, size: int = SIZE) -> Bundle:
    """The shared tiny bundle (dicom_node.testing) at this module's input size."""
    return make_tiny_bundle(path, labels=LABELS, input_size=size)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.mktemp("bundle"))


def test_resolve_device() -> None:
    """'auto' picks CUDA only when present; 'cpu' is CPU; unknown settings are errors."""
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_without_cuda_is_an_error() -> None:
    """Asking for CUDA on a machine without it fails at start-up, not at the first study."""
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_probabilities_in_unit_interval(bundle: Bundle) -> None:
    """predict returns float32 (N, labels) sigmoid probabilities in [0, 1]; network in eval mode."""
    clf = Classifier(bundle, torch.device("cpu"))
    assert not clf.network.training
    probs = clf.predict(torch.randn(3, 1, SIZE, SIZE))
    assert probs.shape == (3, len(LABELS)) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))


def test_same_result_for_any_batch_size(bundle: Bundle) -> None:
    """Chunks of 1, 3 or all images give the same probabilities (within 1e-4)."""
    batch = torch.randn(7, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    results = [
        Classifier(bundle, torch.device("cpu"), max_batch=m).predict(batch) for m in (1, 3, 32)
    ]
    for other in results[1:]:
        assert np.abs(other - results[0]).max() < 1e-4
    single = Classifier(bundle, torch.device("cpu")).predict(batch[4:5])
    assert np.abs(single[0] - results[0][4]).max() < 1e-4


def test_empty_batch_and_wrong_shapes(bundle: Bundle) -> None:
    """An empty batch gives an empty answer; wrong channel count or size is refused."""
    clf = Classifier(bundle, torch.device("cpu"))
    assert clf.predict(torch.zeros(0, 1, SIZE, SIZE)).shape == (0, len(LABELS))
    with pytest.raises(ValueError, match="expected a batch"):
        clf.predict(torch.zeros(2, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="expects 64 px"):
        clf.predict(torch.zeros(2, 1, 32, 32))


def test_features_are_the_final_feature_maps(bundle: Bundle) -> None:
    """features() gives the DenseNet's final maps: the head on them reproduces the logits."""
    clf = Classifier(bundle, torch.device("cpu"))
    batch = torch.randn(2, 1, SIZE, SIZE)
    features = clf.features(batch)
    assert features.ndim == 4 and features.shape[0] == 2
    assert features.shape[2:] == (SIZE // 32, SIZE // 32)
    net: Any = clf.network  # a DenseNet: its submodules are attributes
    with torch.no_grad():
        probs = torch.sigmoid(net.class_layers(features)).numpy()
    assert np.abs(probs - clf.predict(batch)).max() < 1e-5

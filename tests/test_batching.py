"""Inference batched across callers: same answers as one call, batches formed by size or time."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from dicom_node.model.batching import BatchingClassifier, analyse_batch
from dicom_node.model.bundle import Bundle
from dicom_node.model.explain import gradcam
from dicom_node.model.infer import Classifier
from tests.test_infer import SIZE, tiny_bundle

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.mktemp("bundle"))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_analyse_batch_matches_predict_and_gradcam(bundle: Bundle) -> None:
    """One pass gives predict()'s probabilities and gradcam()'s maps of the present findings."""
    clf = Classifier(bundle, CPU)
    batch = _images(4)
    thresholds = [0.5, 0.45, 0.55]
    result = analyse_batch(clf, batch, thresholds)
    probs = clf.predict(batch)
    assert np.abs(result.probabilities - probs).max() < 1e-5
    wanted = [np.flatnonzero(row >= np.asarray(thresholds)).tolist() for row in probs]
    expected = gradcam(clf, batch, wanted)
    assert [sorted(m) for m in result.maps] == [sorted(m) for m in expected]
    for got, want in zip(result.maps, expected, strict=True):
        for k in want:
            assert np.abs(got[k] - want[k]).max() < 1e-5
    every = analyse_batch(clf, batch, thresholds, explain="all")
    assert all(sorted(m) == [0, 1, 2] for m in every.maps)
    assert analyse_batch(clf, batch, thresholds, explain="none").maps == ({},) * 4


@pytest.mark.parametrize("max_batch", [1, 3, 16])
def test_results_do_not_depend_on_the_batch_size(bundle: Bundle, max_batch: int) -> None:
    """Probabilities and maps agree (1e-4) with one unbatched call whatever max_batch is."""
    images = _images(7, seed=1)
    reference = analyse_batch(Classifier(bundle, CPU), images, bundle.thresholds, "all")
    clf = Classifier(bundle, CPU, max_batch=max_batch)
    with BatchingClassifier(clf, max_batch=max_batch, max_wait_ms=5, explain="all") as batcher:
        result = batcher.analyse(images)
    assert np.abs(result.probabilities - reference.probabilities).max() < 1e-4
    for got, want in zip(result.maps, reference.maps, strict=True):
        assert max(np.abs(got[k] - want[k]).max() for k in want) < 1e-4


def test_concurrent_callers_share_batches_and_get_their_own_answers(bundle: Bundle) -> None:
    """Eight threads submitting 1-3 images each are served in a few batches of at most
    max_batch, and each gets the answers for its own images."""
    clf = Classifier(bundle, CPU)
    requests = [_images(1 + i % 3, seed=10 + i) for i in range(8)]
    expected = [clf.predict(r) for r in requests]
    answers: dict[int, np.ndarray] = {}
    with BatchingClassifier(clf, max_batch=8, max_wait_ms=500, explain="none") as batcher:
        start = threading.Barrier(8)

        def call(i: int) -> None:
            start.wait()
            answers[i] = batcher.analyse(requests[i]).probabilities

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert sorted(answers) == list(range(8))
    for i in range(8):
        assert np.abs(answers[i] - expected[i]).max() < 1e-4
    total = sum(len(r) for r in requests)
    assert batcher.images_run == total  # 16 images in batches of at most 8
    assert 2 <= batcher.batches_run <= 6  # pooled across callers (4 or 5 when unhurried)


def test_a_lone_image_waits_at_most_max_wait(bundle: Bundle) -> None:
    """A single image is run once max_wait_ms has passed, without more images arriving."""
    with BatchingClassifier(Classifier(bundle, CPU), max_batch=64, max_wait_ms=50) as batcher:
        started = time.monotonic()
        result = batcher.analyse(_images(1))
        waited = time.monotonic() - started
    assert result.probabilities.shape == (1, 3)
    assert 0.04 <= waited < 5.0 and batcher.batches_run == 1


def test_bad_inputs_fail_in_the_caller_and_closed_batcher_refuses(bundle: Bundle) -> None:
    """A wrong shape raises in the calling thread; an empty batch answers at once; after
    close(), analyse raises."""
    batcher = BatchingClassifier(Classifier(bundle, CPU), max_batch=4, max_wait_ms=1)
    with pytest.raises(ValueError, match="expected a batch"):
        batcher.analyse(torch.zeros(2, 3, SIZE, SIZE))
    assert batcher.analyse(torch.zeros(0, 1, SIZE, SIZE)).probabilities.shape == (0, 3)
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.analyse(_images(1))


def test_model_errors_reach_every_waiting_caller(bundle: Bundle) -> None:
    """If the forward pass fails, every caller in that batch gets the exception, not a hang."""

    class Exploding(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("model exploded")

    network = bundle.build_network(CPU)
    network.features = Exploding()
    clf = Classifier(bundle, CPU, network=network)
    errors: list[BaseException] = []
    with BatchingClassifier(clf, max_batch=4, max_wait_ms=100) as batcher:

        def call() -> None:
            try:
                batcher.analyse(_images(1))
            except RuntimeError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert [str(e) for e in errors] == ["model exploded"] * 3

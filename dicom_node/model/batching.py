"""Inference batched across images and studies: one forward and Grad-CAM per collected batch."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from dicom_node import metrics
from dicom_node.model.explain import Map, maps_from_features
from dicom_node.model.infer import Classifier

Explain = Literal["present", "all", "none"]
DEFAULT_MAX_WAIT_MS = 10.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Analysis:
    """Probabilities (N, labels) and, per image, Grad-CAM maps (S, S) keyed by label index."""

    probabilities: npt.NDArray[np.float32]
    maps: tuple[dict[int, Map], ...]


def analyse_batch(
    classifier: Classifier,
    batch: torch.Tensor,
    thresholds: Sequence[float],
    explain: Explain = "present",
) -> Analysis:
    """One pass through the network: probabilities, then maps of the findings at or above
    their thresholds ('present'), of every label ('all') or none."""
    n_labels = len(classifier.labels)
    if batch.shape[0] == 0:
        return Analysis(probabilities=np.zeros((0, n_labels), np.float32), maps=())
    started = time.perf_counter()
    features = classifier.features(batch)
    probs = classifier.probabilities(features)
    inferred = time.perf_counter()
    metrics.BATCH_SIZE.observe(batch.shape[0])
    metrics.STAGE_SECONDS.labels(stage="inference").observe(inferred - started)
    if explain == "all":
        wanted = [list(range(n_labels))] * len(probs)
    elif explain == "present":
        wanted = [np.flatnonzero(row >= np.asarray(thresholds)).tolist() for row in probs]
    else:
        wanted = [[] for _ in probs]
    maps = maps_from_features(classifier, features, wanted, size=batch.shape[-1])
    metrics.STAGE_SECONDS.labels(stage="gradcam").observe(time.perf_counter() - inferred)
    return Analysis(probabilities=probs, maps=tuple(maps))


@dataclass(eq=False)
class _Request:
    """One caller's images: filled in by the batching thread, image by image."""

    n: int
    probabilities: list[npt.NDArray[np.float32] | None] = field(default_factory=list)
    maps: list[dict[int, Map]] = field(default_factory=list)
    remaining: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.probabilities = [None] * self.n
        self.maps = [{} for _ in range(self.n)]
        self.remaining = self.n


@dataclass(frozen=True, eq=False, slots=True)
class _Item:
    request: _Request
    position: int
    image: torch.Tensor
    arrived: float


class BatchingClassifier:
    """Thread-safe front of a Classifier: callers' images are pooled into batches of at most
    `max_batch`, run when that many wait or the oldest has waited `max_wait_ms`."""

    def __init__(
        self,
        classifier: Classifier,
        *,
        thresholds: Sequence[float] | None = None,
        max_batch: int = 32,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        explain: Explain = "present",
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be at least 1 and max_wait_ms not negative")
        self.classifier = classifier
        self.thresholds = tuple(classifier.bundle.thresholds if thresholds is None else thresholds)
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.explain: Explain = explain
        self.batches_run = 0  # statistics: batches and images analysed
        self.images_run = 0
        self._pending: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="batching", daemon=True)
        self._thread.start()

    # ---- callers ----------------------------------------------------------------------------

    def analyse(self, batch: torch.Tensor) -> Analysis:
        """Probabilities and maps of `batch` (N, C, S, S); blocks until all N are done."""
        self.classifier.check(batch)
        request = _Request(n=batch.shape[0])
        if request.n == 0:
            return analyse_batch(self.classifier, batch, self.thresholds, self.explain)
        now = time.monotonic()
        with self._cond:
            if self._closed:
                raise RuntimeError("the batching classifier is closed")
            self._pending.extend(_Item(request, i, batch[i], now) for i in range(request.n))
            self._cond.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        probs = np.stack([p for p in request.probabilities if p is not None])
        return Analysis(probabilities=probs, maps=tuple(request.maps))

    def close(self) -> None:
        """Finish what is pending, then stop the batching thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> BatchingClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the batching thread ----------------------------------------------------------------

    def _collect(self) -> list[_Item] | None:
        """The next batch, or None once closed with nothing pending."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None
            deadline = self._pending[0].arrived + self.max_wait
            while len(self._pending) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            take = min(self.max_batch, len(self._pending))
            return [self._pending.popleft() for _ in range(take)]

    def _loop(self) -> None:
        while (items := self._collect()) is not None:
            try:
                batch = torch.stack([item.image for item in items])
                result = analyse_batch(self.classifier, batch, self.thresholds, self.explain)
            except BaseException as exc:  # every waiting caller must hear of it
                for item in items:
                    self._deliver(item, error=exc)
                continue
            self.batches_run += 1
            self.images_run += len(items)
            for k, item in enumerate(items):
                self._deliver(item, probabilities=result.probabilities[k], maps=result.maps[k])

    @staticmethod
    def _deliver(
        item: _Item,
        *,
        probabilities: npt.NDArray[np.float32] | None = None,
        maps: dict[int, Map] | None = None,
        error: BaseException | None = None,
    ) -> None:
        request = item.request  # only this thread writes requests: no lock needed
        request.probabilities[item.position] = probabilities
        request.maps[item.position] = maps or {}
        request.error = request.error or error
        request.remaining -= 1
        if request.remaining == 0:
            request.done.set()

"""Preprocessing of DICOM files (decode, render, letterbox, shrink for the SC), in the worker
thread or in a pool of processes.

Compressed radiographs are decode-bound (JPEG 2000: most of a second per image on one core), and
decoding holds the GIL long enough to delay C-STORE responses in the same process. With
`decode_processes = N` the files are decoded by N spawned processes: in parallel, away from the
receiving threads, and a decoder that crashes on a malformed file takes down a child process,
not the node.
"""

from __future__ import annotations

import logging
import multiprocessing
import resource
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from pydicom import dcmread

from dicom_node.domain import Letterbox
from dicom_node.errors import PreprocessError
from dicom_node.model.pixel_budget import (
    DEFAULT_MAX_PIXELS,
    check_declared_pixels,
    check_pixel_budget,
)
from dicom_node.model.preprocess import (
    InputSpec,
    display_uint8,
    prepare,
    render_for_display,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class PreparedPixels:
    """One file after preprocessing: the display copy for the SC and the model input."""

    display: npt.NDArray[np.uint8]
    model_input: npt.NDArray[np.float32]  # (channels, size, size); numpy pickles plainly
    letterbox: Letterbox


Outcome = PreparedPixels | PreprocessError


def prepare_file(
    path: Path, spec: InputSpec, max_side: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> PreparedPixels:
    """Decode and render one DICOM file as a viewer would, then letterbox and shrink it; an
    image over the pixel budget is refused before any decoder runs."""
    check_declared_pixels(dcmread(path, stop_before_pixels=True), max_pixels)
    ds = dcmread(path)
    check_pixel_budget(ds, max_pixels)
    image = render_for_display(ds)
    tensor, letterbox = prepare(image, spec)
    return PreparedPixels(
        display=display_uint8(image, max_side=max_side),
        model_input=tensor.numpy(),
        letterbox=letterbox,
    )


def _outcome(path: Path, spec: InputSpec, max_side: int, max_pixels: int) -> Outcome:
    """One file's pixels, or why not: a malformed value costs this image only."""
    try:
        return prepare_file(path, spec, max_side, max_pixels=max_pixels)
    except PreprocessError as exc:
        return exc
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        return PreprocessError(f"unreadable header value ({type(exc).__name__}: {exc})")


def _child_init(memory_bytes: int | None) -> None:
    torch.set_num_threads(1)  # one image per process; the pool is the parallelism
    if memory_bytes is not None:  # a decoder's runaway allocation fails here, not in the node
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


class DecodeCrashed(RuntimeError):
    """A decoding process died (a decoder crash on malformed pixel data, or the OOM killer)."""


class DecodePool:
    """N spawned processes that run prepare_file; rebuilt after a child dies."""

    def __init__(self, processes: int, *, memory_bytes: int | None = None) -> None:
        if processes < 1:
            raise ValueError(f"a decode pool needs at least one process, not {processes}")
        self.processes = processes
        self.memory_bytes = memory_bytes
        self._lock = threading.Lock()
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a threaded process
            initializer=_child_init,
            initargs=(self.memory_bytes,),
        )

    def prepare(
        self,
        paths: Sequence[Path],
        spec: InputSpec,
        max_side: int,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> list[Outcome]:
        """Each file's PreparedPixels, or the PreprocessError saying why it cannot be analysed.

        Raises DecodeCrashed when a process died on the way; the pool is rebuilt for later
        calls, and the caller's job is retried or failed with that reason.
        """
        with self._lock:
            executor = self._executor
        try:
            futures: list[Future[Outcome]] = [
                executor.submit(_outcome, path, spec, max_side, max_pixels) for path in paths
            ]
            return [future.result() for future in futures]
        except BrokenProcessPool as exc:
            self._restart(executor)
            raise DecodeCrashed(f"a decoding process died ({exc})") from exc

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:
                log.error("a decoding process died; starting a new pool")
                broken.shutdown(wait=False, cancel_futures=True)
                self._executor = self._start()

    def close(self) -> None:
        with self._lock:
            self._executor.shutdown(wait=True, cancel_futures=True)


def prepare_files(
    paths: Sequence[Path],
    spec: InputSpec,
    max_side: int,
    pool: DecodePool | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[Outcome]:
    """Preprocess the files in the pool when there is one, else here, one after the other."""
    if pool is not None:
        return pool.prepare(paths, spec, max_side, max_pixels=max_pixels)
    return [_outcome(path, spec, max_side, max_pixels) for path in paths]

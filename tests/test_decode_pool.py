"""Preprocessing in a pool of decoding processes: the same pixels as in the worker thread, the same
reasons for files that cannot be analysed, and a pool that outlives the death of a child."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import RLELossless, generate_uid

from dicom_node.model.decode_pool import DecodeCrashed, DecodePool, PreparedPixels, prepare_files
from dicom_node.model.preprocess import InputSpec, PreprocessError
from tests.conftest import chest_image, write_study

SPEC = InputSpec(size=128, mean=0.5, std=0.25)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """An uncompressed DX, an RLE MONOCHROME1 CR, and a DX whose Pixel Data is cut short."""
    study = str(generate_uid())
    plain = chest_image(study_uid=study, size=(300, 260))
    rle = chest_image(study_uid=study, seed=1, size=(260, 300), modality="CR")
    rle.PhotometricInterpretation = "MONOCHROME1"
    rle.compress(RLELossless)
    short = chest_image(study_uid=study, seed=2, size=(200, 200))
    short.PixelData = short.PixelData[:1000]
    return write_study(tmp_path_factory.mktemp("files"), [plain, rle, short])


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    pool = DecodePool(2)
    yield pool
    pool.close()


def test_pool_prepares_exactly_what_the_worker_thread_prepares(
    files: list[Path], pool: DecodePool
) -> None:
    """Display copy, model input and letterbox are identical; the truncated file gives the same
    PreprocessError reason both ways."""
    here = prepare_files(files, SPEC, 256)
    there = prepare_files(files, SPEC, 256, pool)
    for a, b in zip(here[:2], there[:2], strict=True):
        assert isinstance(a, PreparedPixels) and isinstance(b, PreparedPixels)
        assert np.array_equal(a.display, b.display) and max(a.display.shape) == 256
        assert np.array_equal(a.model_input, b.model_input)
        assert a.model_input.shape == (1, 128, 128) and a.letterbox == b.letterbox
    assert isinstance(here[2], PreprocessError) and isinstance(there[2], PreprocessError)
    assert there[2].reason == here[2].reason and "cannot decode Pixel Data" in there[2].reason


def test_a_dead_child_fails_one_call_and_the_pool_recovers(files: list[Path]) -> None:
    """When a decoding process is killed (a decoder crash, the OOM killer), that call raises
    DecodeCrashed, and the next call is served by a fresh pool."""
    pool = DecodePool(1)
    try:
        assert isinstance(pool.prepare(files[:1], SPEC, 128)[0], PreparedPixels)  # child started
        for process in list(pool._executor._processes.values()):
            process.kill()
            process.join(timeout=10)
        time.sleep(0.2)  # the executor notices the death
        with pytest.raises(DecodeCrashed):
            pool.prepare(files[:1], SPEC, 128)
        again = pool.prepare(files, SPEC, 128)
        assert isinstance(again[0], PreparedPixels) and isinstance(again[2], PreprocessError)
    finally:
        pool.close()


def test_a_pool_needs_a_process() -> None:
    """decode_processes 0 means no pool; a pool of 0 processes is refused."""
    with pytest.raises(ValueError, match="at least one process"):
        DecodePool(0)

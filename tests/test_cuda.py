"""The CUDA path (bf16 autocast, channels_last, pinned host buffers, batches of 256), run where
a GPU is present and skipped elsewhere: probabilities agree with the CPU's and Grad-CAM maps of
all 14 findings are made on the GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dicom_node.model.batching import analyse_batch
from dicom_node.model.bundle import load_bundle
from dicom_node.model.infer import Classifier, batch_size_for
from dicom_node.testing import DEMO_BUNDLE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_cuda_probabilities_agree_with_the_cpu_and_grad_cam_runs_on_the_gpu() -> None:
    """The demo bundle on CUDA (bf16) gives the CPU's probabilities within 0.03, in one batch
    of 256 (the device's default), and a Grad-CAM map for each of the 14 findings."""
    bundle = load_bundle(DEMO_BUNDLE)
    cuda = torch.device("cuda")
    assert batch_size_for(cuda, None) == 256
    size = bundle.input_size
    batch = torch.rand(
        256, bundle.in_channels, size, size, generator=torch.Generator().manual_seed(0)
    )
    on_gpu = Classifier(bundle, cuda, max_batch=256)
    on_cpu = Classifier(bundle, torch.device("cpu"), max_batch=32)
    assert on_gpu.cuda and next(on_gpu.network.parameters()).is_cuda
    gpu = on_gpu.predict(batch)
    cpu = on_cpu.predict(batch[:32])
    assert np.abs(gpu[:32] - cpu).max() < 0.03
    analysis = analyse_batch(on_gpu, batch[:8], bundle.thresholds, explain="all")
    assert len(analysis.maps) == 8
    assert all(len(maps) == len(bundle.labels) for maps in analysis.maps)
    for maps in analysis.maps:
        for cam in maps.values():
            assert cam.shape == (size, size) and np.isfinite(cam).all()

"""Batched inference: sigmoid probabilities of a bundle's classifier on CPU or CUDA."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from dicom_node.model.bundle import Bundle
from dicom_node.model.networks import split

DEFAULT_MAX_BATCH = 32
# The batch size a device gets when `max_batch` is not set (bench/RESULTS.md): on a CPU small
# batches run fastest per image (DenseNet121 at 224 px, 2 cores: 17 images/s at 4 to 8, 10 at
# 32); a GPU needs large ones to be kept busy.
DEVICE_MAX_BATCH = {"cpu": 8, "cuda": 256}


def batch_size_for(device: torch.device, setting: int | None) -> int:
    """`setting` when given, else the device's default (DEVICE_MAX_BATCH)."""
    return setting if setting is not None else DEVICE_MAX_BATCH.get(device.type, DEFAULT_MAX_BATCH)


def resolve_device(setting: str) -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N' (error if absent)."""
    choice = setting.strip().lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {setting!r} requested but CUDA is not available")
        return torch.device(choice)
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {setting!r}")


class Classifier:
    """A bundle's network on a device. On CUDA: bf16 autocast and channels_last; CPU: float32."""

    def __init__(
        self,
        bundle: Bundle,
        device: torch.device,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        network: torch.nn.Module | None = None,
    ) -> None:
        """`network` replaces the bundle's weights (tests, fakes); it is moved to `device`."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.bundle = bundle
        self.device = device
        self.max_batch = max_batch
        net = bundle.build_network(device) if network is None else network.to(device).eval()
        if self.cuda:
            # Module.to accepts memory_format at run time; the stubs omit it
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.network = net
        self.parts = split(net)  # trunk (to the Grad-CAM layer) and head, sharing its layers

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels

    def check(self, batch: torch.Tensor) -> None:
        """Raise ValueError unless `batch` is (N, C, S, S) with the bundle's C and S."""
        self._check(batch)

    def _check(self, batch: torch.Tensor) -> None:
        c, s = self.bundle.in_channels, self.bundle.input_size
        if batch.ndim != 4 or batch.shape[1] != c or batch.shape[2] != batch.shape[3]:
            raise ValueError(f"expected a batch (N, {c}, S, S), got {tuple(batch.shape)}")
        if batch.shape[2] != s:
            raise ValueError(f"batch of size {batch.shape[2]} px, the bundle expects {s} px")

    def _chunks(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """The batch in chunks of max_batch on the device; on CUDA from page-locked (pinned)
        host memory, so that the copies are asynchronous and overlap the GPU's work."""
        chunks = []
        for i in range(0, batch.shape[0], self.max_batch):
            part = batch[i : i + self.max_batch]
            if self.cuda and not part.is_cuda:
                part = part.pin_memory()
            chunks.append(part.to(self.device, torch.float32, non_blocking=True))
        return chunks

    def _run(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.cuda):
            out: torch.Tensor = module(x)
        return out.float()

    def predict(self, batch: torch.Tensor) -> npt.NDArray[np.float32]:
        """Sigmoid probabilities (N, labels) for a batch (N, C, S, S), in chunks of max_batch."""
        self._check(batch)
        n_labels = len(self.labels)
        if batch.shape[0] == 0:
            return np.zeros((0, n_labels), np.float32)
        with torch.inference_mode():
            probs = [torch.sigmoid(self._run(self.network, x)).cpu() for x in self._chunks(batch)]
        return torch.cat(probs).numpy().astype(np.float32, copy=False)

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """The final feature maps (N, K, h, w) float32 on the device, for Grad-CAM.

        Computed under no_grad (not inference_mode), so callers may use them in autograd.
        """
        self._check(batch)
        with torch.no_grad():
            maps = [self._run(self.parts.trunk, x).contiguous() for x in self._chunks(batch)]
        return torch.cat(maps)

    def probabilities(self, features: torch.Tensor) -> npt.NDArray[np.float32]:
        """Sigmoid probabilities (N, labels) from final feature maps, the head in float32.

        With `features`, one pass through the network serves both probabilities and Grad-CAM.
        """
        with torch.no_grad():
            logits: torch.Tensor = self.parts.head(
                features.float().clone()
            )  # its ReLU works in place
        return torch.sigmoid(logits).cpu().numpy().astype(np.float32, copy=False)

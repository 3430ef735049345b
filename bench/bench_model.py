"""Model stage throughput: decode, preprocess, forward, Grad-CAM, the batched stage, disk to result.

Not a test. `python bench/bench_model.py` sweeps batch sizes 1..32 on CPU (`--max-batch`; use 256
on CUDA) and prints images per second; `--markdown bench/RESULTS.md` writes the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydicom import Dataset, dcmread
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicom_node.model.batching import BatchingClassifier, analyse_batch
from dicom_node.model.bundle import Bundle, load_bundle, write_bundle
from dicom_node.model.decode_pool import DecodePool, prepare_files
from dicom_node.model.explain import map_to_display
from dicom_node.model.infer import Classifier, resolve_device
from dicom_node.model.preprocess import display_uint8, prepare, render_for_display
from dicom_node.synthetic.phantom_dicom import phantom_dataset
from dicom_node.synthetic.phantoms import LABELS, make_phantom
from dicom_node.testing import DEMO_BUNDLE

SHAPE = (2500, 2048)  # rows, columns of a typical 43 cm detector image
COMPRESSED = (("RLE", RLELossless), ("JPEG-LS", JPEGLSLossless), ("JPEG 2000", JPEG2000Lossless))


@dataclass
class Results:
    """Figures as they are measured, for the console and the markdown snippet."""

    lines: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)


def rate(fn: Callable[[], object], images: int, *, repeats: int, warmup: int = 1) -> float:
    """Images per second of `fn` (which handles `images` images), best of `repeats`."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return images / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- decoding and preprocessing ---------------------------------------------------------------


def encode_all(ds: Dataset, folder: Path) -> dict[str, Path]:
    """The same radiograph in five transfer syntaxes (JPEG lossless SV1 through DCMTK)."""
    files = {"uncompressed": folder / "raw.dcm"}
    ds.save_as(files["uncompressed"], enforce_file_format=True)
    for name, syntax in COMPRESSED:
        copy = dcmread(files["uncompressed"])
        copy.compress(syntax)
        files[name] = folder / f"{name.replace(' ', '')}.dcm"
        copy.save_as(files[name], enforce_file_format=True)
    dcmcjpeg = shutil.which("dcmcjpeg")
    if dcmcjpeg:
        files["JPEG lossless SV1"] = folder / "jpegll.dcm"
        args = [dcmcjpeg, "+e1", str(files["uncompressed"]), str(files["JPEG lossless SV1"])]
        subprocess.run(args, check=True)
    return files


def bench_decoding(
    res: Results, folder: Path, *, bits: int, repeats: int
) -> tuple[dict[str, Path], dict[str, float]]:
    rng = np.random.default_rng(0)
    phantom = make_phantom(rng, findings=["Cardiomegaly", "Effusion", "Mass"], size=SHAPE)
    ds = phantom_dataset(
        phantom, patient_id="BENCH", patient_name="Bench^Mark", study_uid="1.2.3", bits_stored=bits
    )
    files = encode_all(ds, folder)
    res.add(
        f"\n### Decoding one {SHAPE[0]}x{SHAPE[1]} radiograph, 16 bits allocated, {bits} stored"
    )
    res.add("\nOne thread; `dcmread(path).pixel_array`, best of the repeats.\n")
    res.add("| transfer syntax | file MB | images/s | ms/image |\n|---|---:|---:|---:|")
    decode_ms = {}
    for name, path in files.items():
        per_s = rate(lambda p=path: dcmread(p).pixel_array, 1, repeats=repeats)  # type: ignore[misc]
        decode_ms[name] = 1000 / per_s
        res.add(f"| {name} | {path.stat().st_size / 1e6:.1f} | {per_s:.1f} | {1000 / per_s:.0f} |")
    return files, decode_ms


def bench_preprocessing(res: Results, raw: Path, bundle: Bundle, repeats: int) -> float:
    ds = dcmread(raw)
    shown = render_for_display(ds)
    steps = {
        "render_for_display (modality LUT, window, [0, 1])": lambda: render_for_display(ds),
        f"prepare (letterbox to {bundle.input_size} px, normalise)": lambda: prepare(
            shown, bundle.input_spec
        ),
        "display_uint8 (1024 px copy for the SC)": lambda: display_uint8(shown),
    }
    res.add("\n### Preprocessing one decoded radiograph (one thread)\n")
    res.add("| step | images/s | ms/image |\n|---|---:|---:|")
    total_ms = 0.0
    for name, fn in steps.items():
        per_s = rate(fn, 1, repeats=repeats)
        total_ms += 1000 / per_s
        res.add(f"| {name} | {per_s:.1f} | {1000 / per_s:.0f} |")
    res.add(f"| **all three** | **{1000 / total_ms:.1f}** | {total_ms:.0f} |")
    return 1000 / total_ms


# ---- the model --------------------------------------------------------------------------------


def bench_bundle(folder: Path, size: int) -> Bundle:
    """The demo's DenseNet121 weights (14 labels) served at `size` px: trained weights keep the
    activations realistic (random ones underflow to denormals, which are slow on a CPU)."""
    demo = load_bundle(DEMO_BUNDLE)
    state = torch.load(demo.weights_path, map_location="cpu", weights_only=True)
    section = {
        "labels": list(demo.labels),
        "thresholds": dict(zip(demo.labels, demo.thresholds, strict=True)),
        "input_size": size,
        "in_channels": 1,
        "intensity": {"mean": demo.mean, "std": demo.std},
        "synthetic_demo": True,
    }
    meta = {"name": "bench-densenet121", "version": "0.0.0", "dicom_node": section}
    network_def = {
        "_target_": "monai.networks.nets.DenseNet121",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": len(LABELS),
    }
    return write_bundle(
        folder, metadata=meta, network_def=network_def, state_dict=state, license_text="-"
    )


def batch_sizes(limit: int) -> list[int]:
    sizes, b = [], 1
    while b <= limit:
        sizes.append(b)
        b *= 2
    return sizes


def bench_model(
    res: Results, clf: Classifier, sizes: list[int], repeats: int
) -> dict[int, tuple[float, float]]:
    """Forward only, and forward plus Grad-CAM maps of all 14 findings, per batch size."""
    s, device = clf.bundle.input_size, clf.device
    res.add(f"\n### DenseNet121 at {s} px on {device} ({torch.get_num_threads()} threads)\n")
    res.add("| batch | forward images/s | forward + Grad-CAM of all 14 images/s | ratio |")
    res.add("|---:|---:|---:|---:|")
    found: dict[int, tuple[float, float]] = {}
    for b in sizes:
        x = torch.randn(b, 1, s, s)

        def forward(x: torch.Tensor = x) -> None:
            clf.predict(x)
            sync(device)

        def with_cams(x: torch.Tensor = x) -> None:
            analyse_batch(clf, x, clf.bundle.thresholds, explain="all")
            sync(device)

        fwd, cam = rate(forward, b, repeats=repeats), rate(with_cams, b, repeats=repeats)
        found[b] = (fwd, cam)
        res.add(f"| {b} | {fwd:.1f} | {cam:.1f} | {cam / fwd:.2f} |")
    return found


def bench_stage(res: Results, clf: Classifier, *, max_batch: int, model_rate: float) -> float:
    """The batched inference stage: 4 threads submit single preprocessed images; probabilities
    and the maps of the present findings come back."""
    s, n = clf.bundle.input_size, max(4 * max_batch, 32)
    images = torch.randn(n, 1, s, s)
    with BatchingClassifier(clf, max_batch=max_batch, max_wait_ms=20) as batcher:

        def run() -> None:
            with ThreadPoolExecutor(max_workers=max(4, max_batch)) as pool:
                list(pool.map(lambda i: batcher.analyse(images[i : i + 1]), range(n)))

        per_s = rate(run, n, repeats=1)
        batches = batcher.batches_run
    res.add(
        f"\n### The inference stage (BatchingClassifier, max_batch {max_batch}, max_wait 20 ms)\n"
    )
    res.add(
        f"{n} single-image requests from {max(4, max_batch)} threads, probabilities and the maps "
        f"of findings at or above threshold out: **{per_s:.1f} images/s**, "
        f"{per_s / model_rate:.0%} of the model-only rate at batch {max_batch} "
        f"({model_rate:.1f} images/s); {batches} batches over warm-up and run."
    )
    return per_s


# ---- from DICOM files on disk to results ------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class StageCosts:
    """Core-milliseconds per image of each stage, as measured above (the model stage's wall
    time counts every torch thread)."""

    decode: dict[str, float]
    preprocess: float
    model: float

    def limiting(self, syntax: str) -> str:
        cpu = self.decode[syntax] + self.preprocess
        if cpu >= self.model:
            return f"decode + preprocess ({cpu:.0f} ms vs model stage {self.model:.0f} ms)"
        return f"model stage ({self.model:.0f} ms vs decode + preprocess {cpu:.0f} ms)"


def bench_end_to_end(
    res: Results, clf: Classifier, files: dict[str, Path], *, n: int, costs: StageCosts
) -> None:
    """Worker threads each read a file, decode, render, letterbox, submit to the batcher and map
    the findings' Grad-CAMs back onto the display image, like pipeline.analyse."""
    res.add(f"\n### DICOM file on disk to probabilities and display maps ({n} images each)\n")
    res.add("| transfer syntax | threads | images/s | limiting stage (per image) |")
    res.add("|---|---:|---:|---|")
    bundle, max_batch = clf.bundle, clf.max_batch
    for name in ("uncompressed", "JPEG 2000"):
        path = files[name]
        with BatchingClassifier(clf, max_batch=max_batch, max_wait_ms=20) as batcher:

            def one(_: int, p: Path = path, b: BatchingClassifier = batcher) -> None:
                shown = render_for_display(dcmread(p))
                x, box = prepare(shown, bundle.input_spec)
                display = display_uint8(shown)
                analysis = b.analyse(x[None])
                for cam in analysis.maps[0].values():
                    map_to_display(cam, box, display.shape)

            for threads in (2, 4):
                with ThreadPoolExecutor(max_workers=threads) as pool:
                    per_s = rate(lambda p=pool: list(p.map(one, range(n))), n, repeats=1)  # type: ignore[misc]
                res.add(f"| {name} | {threads} | {per_s:.2f} | {costs.limiting(name)} |")


def bench_decode_pool(res: Results, files: dict[str, Path], bundle: Bundle, *, n: int) -> None:
    """Preprocessing of n files (decode, render, letterbox, SC copy) in the calling thread, as
    with decode_processes = 0, against a pool of decoding processes (decode_processes = P)."""
    counts = sorted({1, 2, os.cpu_count() or 1})
    res.add(f"\n### Preprocessing {n} files: worker thread against a decode pool\n")
    res.add(
        "| transfer syntax | in the thread images/s | "
        + " | ".join(f"{p} processes" for p in counts)
        + " |"
    )
    res.add("|---|---:|" + "---:|" * len(counts))
    spec = bundle.input_spec
    for name in ("uncompressed", "JPEG-LS", "JPEG 2000"):
        paths = [files[name]] * n
        here = rate(lambda ps=paths: prepare_files(ps, spec, 1024), n, repeats=1)
        cells = []
        for processes in counts:
            pool = DecodePool(processes)
            try:
                there = rate(
                    lambda ps=paths, p=pool: prepare_files(ps, spec, 1024, p), n, repeats=1
                )
            finally:
                pool.close()
            cells.append(f"{there:.2f} ({there / here:.2f}x)")
        res.add(f"| {name} | {here:.2f} | " + " | ".join(cells) + " |")


# ---- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--input-size", type=int, default=224, help="model input side (px)")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="this bundle as it is (default: the demo weights at --input-size)",
    )
    parser.add_argument("--max-batch", type=int, default=0, help="0: 32 on CPU, 256 on CUDA")
    parser.add_argument("--bits", type=int, default=14, help="BitsStored of the test image")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--e2e-images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--markdown", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    limit = args.max_batch or (256 if device.type == "cuda" else 32)
    res = Results()
    res.add(_machine(device))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.bundle:
            bundle = load_bundle(args.bundle)
        else:
            bundle = bench_bundle(folder / "b", args.input_size)
        files, decode_ms = bench_decoding(res, folder, bits=args.bits, repeats=args.repeats)
        preprocess = bench_preprocessing(res, files["uncompressed"], bundle, args.repeats)
        clf = Classifier(bundle, device, max_batch=limit)
        rates = bench_model(res, clf, batch_sizes(limit), args.repeats)
        stage = bench_stage(res, clf, max_batch=limit, model_rate=rates[limit][0])
        model_ms = 1000 / stage * (torch.get_num_threads() if device.type == "cpu" else 1)
        costs = StageCosts(decode=decode_ms, preprocess=1000 / preprocess, model=model_ms)
        bench_end_to_end(res, clf, files, n=args.e2e_images, costs=costs)
        bench_decode_pool(res, files, bundle, n=args.e2e_images)
    if args.markdown:
        args.markdown.write_text("\n".join(res.lines) + "\n")


def _machine(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return (
        "## Model benchmark (`bench/bench_model.py`)\n\n"
        f"Measured on {name}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}."
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    main()

"""A published checkpoint's way into service, as an operator takes it: `dicom-node bundle import`
of a CheXNet-layout DenseNet121 checkpoint, `dicom-node evaluate --calibrate` on a labelled DICOM
folder (CR and DX frontal chests, labels.csv beside them), then a node serving the calibrated
bundle: a C-STORE of a frontal DX gives an SR (and SCs) at the PACS naming the calibrated
version, with each finding's calibrated threshold in its TID 4019 algorithm parameters. The two
commands run as their own processes (`python -m dicom_node.cli`), as an operator runs them."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.networks.nets.densenet import DenseNet121
from pydicom import Dataset, dcmread
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select

from dicom_node.model.bundle import METADATA, sha256_file
from dicom_node.node import Node
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent, Result, ResultObject
from dicom_node.testing import node_settings
from dicom_node.training.datasets import CXR14_LABELS
from tests.conftest import chest_image, write_study
from tests.peers import StoreSCP, storescu

pytestmark = pytest.mark.integration

IMAGES = 10  # DenseNet121 at 224 px: about 12 images/s per CPU core
# Findings with positive and negative images in the calibration folder (image numbers positive);
# every other label has no positive image there and keeps its imported threshold.
POSITIVES = {"Cardiomegaly": (0, 2, 4, 6, 8), "Effusion": (1, 4, 7), "Pneumothorax": (3, 8)}
IMPORTED_THRESHOLD = 0.5  # `bundle import`'s default: uncalibrated

# TID 1500 / 1501 / 4019 concept names (DCM)
MEASUREMENT_GROUP, TRACKING_ID = "125007", "112039"
ALGORITHM_NAME, ALGORITHM_PARAMETERS, ALGORITHM_VERSION = "111001", "111002", "111003"
DEVICE_OBSERVER_NAME = "121013"


# ---- the checkpoint, in the layout CheXNet reimplementations publish -----------------------


def _torchvision_key(key: str) -> str:
    """MONAI's DenseNet key as an arnoweng/CheXNet checkpoint names it: DataParallel's `module.`
    and the wrapper's `densenet121.` prefixes, torchvision before 0.3 (`norm.1`, `conv.2`), the
    head `classifier.0` (Linear, then Sigmoid)."""
    key = key.replace("class_layers.out.", "classifier.0.").replace(".layers.", ".")
    key = re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)
    return "module.densenet121." + key


def write_chexnet_checkpoint(path: Path) -> Path:
    """A DenseNet121 with 14 outputs (NIH ChestX-ray14), seeded weights and BatchNorm statistics,
    saved as a training checkpoint whose `state_dict` has torchvision's old key names and no
    `num_batches_tracked` (PyTorch before 0.4.1)."""
    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=14)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                mean, var = module.running_mean, module.running_var
                assert mean is not None and var is not None
                mean.copy_(torch.rand(module.num_features, generator=gen) - 0.5)
                var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
    state = {
        _torchvision_key(key): value
        for key, value in net.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    assert "module.densenet121.features.denseblock1.denselayer1.norm.1.weight" in state
    torch.save({"epoch": 7, "arch": "densenet121", "best_loss": 0.15, "state_dict": state}, path)
    return path


# ---- the labelled DICOM folder ----------------------------------------------------------------


def write_labelled_folder(root: Path) -> Path:
    """`IMAGES` frontal chest phantoms, one patient each, alternately CR (MONOCHROME1, 10 bits,
    rescaled) and DX (MONOCHROME2, 12 bits), PA and AP, under root/<patient>/; root/labels.csv
    names each file and its findings (NIH style, 'No Finding' for none)."""
    rows = []
    for n in range(IMAGES):
        findings = tuple(label for label, images in POSITIVES.items() if n in images)
        patient = f"CAL{n:03d}"
        options: dict[str, Any] = (
            {"modality": "CR", "photometric": "MONOCHROME1", "bits_stored": 10}
            if n % 2
            else {"modality": "DX"}
        )
        ds = chest_image(
            study_uid=str(generate_uid()),
            findings=findings,
            view_position="AP" if n % 3 == 0 else "PA",
            seed=100 + n,
            size=(320, 288),
            **options,
        )
        ds.PatientID = patient
        (path,) = write_study(root / patient, [ds])
        labels = "|".join(findings) or "No Finding"
        rows.append({"file": str(path.relative_to(root)), "labels": labels})
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "labels"])
        writer.writeheader()
        writer.writerows(rows)
    return root


# ---- the commands, as an operator runs them ---------------------------------------------------


def dicom_node_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """`dicom-node ARGV` in its own process (no DICOM_NODE_* settings from the test run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    done = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"dicom-node {argv[:2]}: {done.stdout}\n{done.stderr}"
    return done


def metadata(bundle: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((bundle / METADATA).read_text(encoding="utf-8"))
    return doc


# ---- the SR, read back -------------------------------------------------------------------------


def _items(node: Dataset) -> Iterator[Dataset]:
    for child in node.get("ContentSequence", []):
        yield child
        yield from _items(child)


def _named(node: Dataset, code_value: str) -> list[Dataset]:
    return [i for i in _items(node) if i.ConceptNameCodeSequence[0].CodeValue == code_value]


@dataclass(frozen=True, slots=True)
class StatedAlgorithm:
    """What one TID 1501 group of the SR says about the algorithm that made its finding."""

    name: str
    version: str
    parameters: dict[str, str]


def stated_algorithms(sr: Dataset) -> dict[str, StatedAlgorithm]:
    """Finding label (from the Tracking Identifier "Effusion, image 1") -> its TID 4019 items."""
    found = {}
    for group in _named(sr, MEASUREMENT_GROUP):
        [tracking] = _named(group, TRACKING_ID)
        label = str(tracking.TextValue).rsplit(", image ", 1)[0]
        [name] = _named(group, ALGORITHM_NAME)
        [version] = _named(group, ALGORITHM_VERSION)
        parameters = dict(
            str(item.TextValue).split("=", 1) for item in _named(group, ALGORITHM_PARAMETERS)
        )
        found[label] = StatedAlgorithm(str(name.TextValue), str(version.TextValue), parameters)
    return found


# ---- the life cycle, once for the module ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lifecycle:
    checkpoint_sha256: str
    paths: tuple[Path, Path]  # the imported and the calibrated bundle
    imported: dict[str, Any]  # configs/metadata.json of the imported bundle
    calibrated: dict[str, Any]  # ... and of the calibrated one
    evaluate_stdout: str
    sr: Dataset  # what the PACS received for the new DX study
    scs: list[Dataset]
    results: list[Result]  # the node's results table for that study
    analysis_models: list[str | None]  # the model its audit events name
    served_calibration: list[Result]  # the node's results for the calibration images


def _study_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _received(pacs: StoreSCP, study_uid: str, sop_uids: set[str]) -> list[Dataset]:
    """The objects of `study_uid` the PACS holds once it holds all of `sop_uids`."""
    mine = pacs.study_objects(
        study_uid, lambda found: {str(ds.SOPInstanceUID) for ds in found} >= sop_uids
    )
    if {str(ds.SOPInstanceUID) for ds in mine} < sop_uids:
        raise TimeoutError(f"the PACS holds {len(mine)} of {len(sop_uids)} objects")
    return mine


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Lifecycle:
    """Import, calibrate, serve: a new frontal DX study and the calibration images themselves
    go through a node serving the calibrated bundle, its results reach a storescp PACS."""
    root = tmp_path_factory.mktemp("lifecycle")
    checkpoint = write_chexnet_checkpoint(root / "model.pth.tar")
    imported, calibrated = root / "chexnet-densenet121", root / "chexnet-densenet121-site-a"
    dicom_node_cli(
        "bundle", "import", str(checkpoint), "--out", str(imported),
        "--name", "chexnet-densenet121", "--manufacturer", "arnoweng/CheXNet (test weights)",
    )  # fmt: skip
    data = write_labelled_folder(root / "site-a")
    evaluated = dicom_node_cli(
        "evaluate", str(imported), str(data), "--split", "all",
        "--calibrate", "--out", str(calibrated), "--bootstrap", "200",
    )  # fmt: skip
    calibration_files = sorted(data.rglob("*.dcm"))
    with StoreSCP(root / "pacs", aet="PACS") as pacs:
        destination = {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}
        settings = node_settings(root / "node", model_bundle=calibrated, destinations=[destination])
        with Node(settings) as node:
            study_uid = str(generate_uid())
            image = chest_image(study_uid=study_uid, findings=("Cardiomegaly", "Effusion"), seed=7)
            for files in (write_study(root / "modality", [image]), calibration_files):
                sent = storescu(files, port=node.port)
                assert sent.returncode == 0, sent.stderr
            job = wait_finished(node.sessions, study_uid, timeout=90)
            assert job.state == "done", job.detail
            calibration_jobs = [
                wait_finished(node.sessions, _study_uid(path), timeout=90).id
                for path in calibration_files
            ]
            with node.sessions() as session:
                results = list(session.scalars(select(Result).where(Result.job_id == job.id)))
                served = list(
                    session.scalars(select(Result).where(Result.job_id.in_(calibration_jobs)))
                )
                emitted = session.scalars(
                    select(ResultObject.sop_instance_uid).where(ResultObject.job_id == job.id)
                ).all()
                models = list(
                    session.scalars(
                        select(AuditEvent.model).where(
                            AuditEvent.job_id == job.id, AuditEvent.model.is_not(None)
                        )
                    )
                )
            received = _received(pacs, study_uid, set(emitted))
    [sr] = [ds for ds in received if ds.Modality == "SR"]
    scs = [ds for ds in received if ds.SOPClassUID == SecondaryCaptureImageStorage]
    return Lifecycle(
        checkpoint_sha256=sha256_file(checkpoint),
        paths=(imported, calibrated),
        imported=metadata(imported),
        calibrated=metadata(calibrated),
        evaluate_stdout=evaluated.stdout,
        sr=sr,
        scs=scs,
        results=results,
        analysis_models=models,
        served_calibration=served,
    )


def test_calibration_writes_a_new_version_with_new_thresholds(lifecycle: Lifecycle) -> None:
    """The import names the checkpoint (version 1.0.0+<its SHA-256 prefix>, every threshold 0.5);
    calibration writes 1.0.0+<prefix>.cal.<today> with the same weights, a new threshold for
    each finding the folder has positive and negative images of (the data's own Youden
    threshold, inside [0.01, 0.99]), and the imported one, with a note, for the others."""
    imported, calibrated = lifecycle.imported, lifecycle.calibrated
    prefix = lifecycle.checkpoint_sha256[:12]
    assert imported["version"] == f"1.0.0+{prefix}"
    assert imported["dicom_node"]["thresholds"] == dict.fromkeys(CXR14_LABELS, IMPORTED_THRESHOLD)
    section = calibrated["dicom_node"]
    calibration = section["calibration"]
    day = dt.date.fromisoformat(calibration["date"])  # today (UTC), unless midnight just passed
    assert (dt.datetime.now(dt.UTC).date() - day).days in (0, 1)
    assert calibrated["version"] == f"1.0.0+{prefix}.cal.{day:%Y%m%d}"
    assert calibrated["name"] == imported["name"] == "chexnet-densenet121"
    assert calibration["calibrated_from"]["version"] == imported["version"]
    assert calibration["n_images"] == IMAGES and "DICOM folder site-a" in calibration["data"]
    assert calibration["rule"].startswith("Youden")
    assert set(section["thresholds"]) == set(CXR14_LABELS)
    for label, threshold in section["thresholds"].items():
        entry = calibration["labels"][label]
        assert entry["threshold"] == threshold
        assert entry["previous_threshold"] == IMPORTED_THRESHOLD
        if label in POSITIVES:
            assert entry["positives"] == len(POSITIVES[label])
            assert entry["negatives"] == IMAGES - len(POSITIVES[label])
            assert threshold != IMPORTED_THRESHOLD and 0.01 <= threshold <= 0.99
            assert "note" not in entry
        else:
            assert (entry["positives"], threshold) == (0, IMPORTED_THRESHOLD)
            assert entry["note"].startswith("kept")
    weights = [path / "models" / "model.pt" for path in lifecycle.paths]
    assert sha256_file(weights[0]) == sha256_file(weights[1])
    assert calibrated["version"] in lifecycle.evaluate_stdout


def test_the_node_serves_the_calibrated_bundle_and_states_its_thresholds(
    lifecycle: Lifecycle,
) -> None:
    """The SR the PACS received from a node serving the calibrated bundle names that bundle's
    version (TID 4019 in every group, Software Versions, the device observer; the SCs too), and
    each finding's group states the calibrated threshold from the new metadata.json (as the SR
    encodes it: `threshold=<%g>`), not the imported 0.5, for every calibrated finding; the
    results table holds the exact thresholds and the version, and decisions follow them."""
    name, version = lifecycle.calibrated["name"], lifecycle.calibrated["version"]
    thresholds: dict[str, float] = lifecycle.calibrated["dicom_node"]["thresholds"]
    sr = lifecycle.sr
    stated = stated_algorithms(sr)
    assert set(stated) == set(CXR14_LABELS)  # one image: one group per finding
    for label, algorithm in stated.items():
        assert (algorithm.name, algorithm.version) == (name, version)
        assert algorithm.parameters["threshold"] == f"{thresholds[label]:g}"
        assert float(algorithm.parameters["threshold"]) == pytest.approx(thresholds[label], 1e-5)
    changed = [
        label
        for label, algorithm in stated.items()
        if float(algorithm.parameters["threshold"]) != IMPORTED_THRESHOLD
    ]
    assert sorted(changed) == sorted(POSITIVES)
    assert sr.SoftwareVersions == version
    [observer] = _named(sr, DEVICE_OBSERVER_NAME)  # TID 1004: the model's label
    assert observer.TextValue == f"{name} {version}"
    assert lifecycle.scs, "no Grad-CAM secondary capture reached the PACS"
    for sc in lifecycle.scs:
        assert sc.SoftwareVersions == version
    by_label = {r.label: r for r in lifecycle.results}
    assert set(by_label) == set(CXR14_LABELS)
    for label, result in by_label.items():
        assert (result.model_name, result.model_version) == (name, version)
        assert result.threshold == thresholds[label]
        assert result.present == (result.probability >= thresholds[label])
    assert lifecycle.analysis_models
    assert all(model is not None and version in model for model in lifecycle.analysis_models)
    assert np.isfinite([r.probability for r in lifecycle.results]).all()


def test_the_node_scores_the_calibration_images_as_evaluate_did(lifecycle: Lifecycle) -> None:
    """The thresholds are only as good as the agreement between `evaluate` (the training data
    path) and the node (C-STORE, decode, preprocess, infer): each Youden threshold is one
    calibration image's score, and the node, given those images, scores one of them within
    1e-5 of it, for every calibrated finding; every calibration image was analysed."""
    thresholds: dict[str, float] = lifecycle.calibrated["dicom_node"]["thresholds"]
    served = lifecycle.served_calibration
    assert len({r.sop_instance_uid for r in served}) == IMAGES
    for label in POSITIVES:
        scores = [r.probability for r in served if r.label == label]
        assert min(abs(p - thresholds[label]) for p in scores) < 1e-5, label

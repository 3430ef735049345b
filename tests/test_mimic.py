"""MIMIC-CXR-JPG as PhysioNet distributes it: the gzip-compressed metadata, split and CheXpert
labels CSVs with their real columns beside files/p10/p100.../s5.../<dicom_id>.jpg, read into
records (frontal views, the official split, uncertain labels by policy), detected by read_layout
and evaluated through the CLI."""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicom_node.cli import model_commands, models
from dicom_node.testing import tiny_bundle
from dicom_node.training.chexpert import CHEXPERT_LABELS
from dicom_node.training.datasets import DatasetError, read_layout
from dicom_node.training.mimic import image_path, is_mimic, read_mimic

# The columns of the three CSVs, as distributed.
LABELS_HEADER = [
    "subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
    "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
    "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
]  # fmt: skip
METADATA_HEADER = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
]  # fmt: skip
SPLIT_HEADER = ["dicom_id", "study_id", "subject_id", "split"]
# Six subjects, one study each: (subject_id, study_id, official split, frontal view).
STUDIES = [
    ("10000032", "50414267", "train", "PA"),
    ("10000764", "57375967", "train", "AP"),
    ("10000898", "50771383", "train", "PA"),
    ("11001038", "58224503", "validate", "AP"),
    ("12001176", "53186264", "test", "PA"),
    ("19001217", "58913004", "test", "AP"),
]
MISSING = "ffffffff-00000000-00000000-00000000-00000000"  # listed, frontal, not on disk


def _dicom_id(k: int, view: int) -> str:
    return f"{k:08x}-{view:08x}-112c0b34-7bc16630-4e384014"


def _write_gz(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    with gzip.open(path, "wt", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def _values(k: int) -> dict[str, str]:
    """Cardiomegaly in subjects 0, 2, 4; Edema uncertain in 0 and 1, present in 2; Pleural
    Effusion in 3 and 4; No Finding in 5; Support Devices blank everywhere."""
    values = dict.fromkeys(CHEXPERT_LABELS, "")
    values["Cardiomegaly"] = "1.0" if k % 2 == 0 else "0.0"
    values["Edema"] = "-1.0" if k in (0, 1) else ("1.0" if k == 2 else "")
    values["Pleural Effusion"] = "1.0" if k in (3, 4) else "0.0"
    return {**values, "No Finding": "1.0" if k == 5 else ""}


def write_mimic(root: Path) -> Path:
    """The MIMIC-CXR-JPG root: a frontal (PA or AP) and a lateral JPEG per study, one more
    frontal image listed but missing on disk, the three CSVs gzip-compressed."""
    labels, metadata, split = [], [], []
    for k, (subject, study, part, frontal) in enumerate(STUDIES):
        labels.append({"subject_id": subject, "study_id": study, **_values(k)})
        for view, position in enumerate((frontal, "LATERAL" if k % 2 else "LL")):
            dicom_id = _dicom_id(k, view)
            path = image_path(root, subject, study, dicom_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            ramp = np.linspace(30, 220, 40)[None, :] * np.ones((40, 1)) + k
            Image.fromarray(ramp.astype(np.uint8)).save(path)
            metadata.append(_metadata_row(dicom_id, subject, study, position))
            split.append({"dicom_id": dicom_id, "study_id": study, "subject_id": subject})
            split[-1]["split"] = part
    subject, study, _, _ = STUDIES[0]
    metadata.append(_metadata_row(MISSING, subject, study, "AP"))
    split.append({"dicom_id": MISSING, "study_id": study, "subject_id": subject, "split": "train"})
    _write_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", LABELS_HEADER, labels)
    _write_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_HEADER, metadata)
    _write_gz(root / "mimic-cxr-2.0.0-split.csv.gz", SPLIT_HEADER, split)
    return root


def _metadata_row(dicom_id: str, subject: str, study: str, position: str) -> dict[str, str]:
    lateral = position not in ("PA", "AP")
    return {
        "dicom_id": dicom_id,
        "subject_id": subject,
        "study_id": study,
        "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
        "ViewPosition": position,
        "Rows": "40",
        "Columns": "40",
        "StudyDate": "21800506",
        "StudyTime": "213014.531",
        "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
        "ViewCodeSequence_CodeMeaning": "lateral" if lateral else "postero-anterior",
        "PatientOrientationCodeSequence_CodeMeaning": "Erect",
    }


def test_records_frontal_views_and_missing_image(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Records point at files/p??/p<subject>/s<study>/<dicom_id>.jpg, the patient is subject_id,
    only PA and AP views are kept (laterals too with frontal_only=False), and the image missing on
    disk is left out with one warning line."""
    root = write_mimic(tmp_path / "mimic-cxr-jpg")
    with caplog.at_level(logging.WARNING, logger="dicom_node.training.mimic"):
        split = read_mimic(root)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("1 images listed")
    records = split.part("all")
    assert len(records) == 6 and all(r.path.is_file() for r in records)
    assert all(r.path.stem.split("-")[1] == "00000000" for r in records)  # the frontal view
    first = next(r for r in records if r.patient_id == "10000032")
    assert first.path == root / "files/p10/p10000032/s50414267" / f"{_dicom_id(0, 0)}.jpg"
    assert {r.patient_id for r in records} == {s for s, *_ in STUDIES}
    assert split.labels == CHEXPERT_LABELS
    assert len(read_mimic(root, frontal_only=False).part("all")) == 12


def test_official_split_is_kept(tmp_path: Path) -> None:
    """train, validate and test of the split CSV become train, val and test, not re-split."""
    split = read_mimic(write_mimic(tmp_path))
    assert [r.patient_id for r in split.train] == ["10000032", "10000764", "10000898"]
    assert [r.patient_id for r in split.val] == ["11001038"]
    assert [r.patient_id for r in split.test] == ["12001176", "19001217"]
    assert "official split, 3 training, 1 validation, 2 test images" in split.description


@pytest.mark.parametrize(
    ("policy", "edema"),
    [("ignore", [math.nan, math.nan, 1.0]), ("zeros", [0, 0, 1]), ("ones", [1, 1, 1])],
)
def test_uncertain_labels_follow_the_policy(
    tmp_path: Path, policy: str, edema: list[float]
) -> None:
    """-1.0 is unknown (U-Ignore), negative (U-Zeros) or positive (U-Ones), as for CheXpert;
    blank is negative; NIH's Effusion reads Pleural Effusion; labels MIMIC lacks are unknown."""
    split = read_mimic(write_mimic(tmp_path), uncertain=policy)  # type: ignore[arg-type]
    assert f"U-{policy.capitalize()}" in split.description
    by_patient = {r.patient_id: r for r in split.part("all")}
    labels = ("Edema", "Cardiomegaly", "Effusion", "Pleural Effusion", "Mass")
    targets = [by_patient[subject].target(labels) for subject, *_ in STUDIES]
    assert [t[0] for t in targets[:3]] == pytest.approx(edema, nan_ok=True)
    assert targets[3][:4] == [0.0, 0.0, 1.0, 1.0] and targets[4][:4] == [0.0, 1.0, 1.0, 1.0]
    assert targets[5][:4] == [0.0, 0.0, 0.0, 0.0]
    assert all(math.isnan(t[4]) for t in targets)  # Mass: not a CheXpert label


def test_read_layout_detects_mimic(tmp_path: Path) -> None:
    """read_layout recognises the folder by its CSVs and passes the policy and views on."""
    root = write_mimic(tmp_path)
    assert is_mimic(root) and not is_mimic(tmp_path / "files")
    split = read_layout(root, uncertain="zeros", frontal_only=False)
    assert split.description.startswith("MIMIC-CXR-JPG") and "U-Zeros" in split.description
    assert len(split.part("all")) == 12


def test_uncompressed_negbio_labels_and_bad_split_value(tmp_path: Path) -> None:
    """An uncompressed NegBio labels file serves when the CheXpert one is absent; an unknown
    split value is an error naming the file and line."""
    root = write_mimic(tmp_path)
    with gzip.open(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "rt") as f:
        (root / "mimic-cxr-2.0.0-negbio.csv").write_text(f.read())
    (root / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    split = read_layout(root)
    assert "mimic-cxr-2.0.0-negbio.csv" in split.description and len(split.part("all")) == 6
    with pytest.raises(DatasetError, match="labels file"):
        read_mimic(root, labeler="chexpert")
    split_csv = root / "mimic-cxr-2.0.0-split.csv.gz"
    with gzip.open(split_csv, "rt") as f:
        text = f.read().replace(",train\n", ",training\n", 1)
    with gzip.open(split_csv, "wt") as f:
        f.write(text)
    with pytest.raises(DatasetError, match=r"split\.csv\.gz line 2: .* not 'training'"):
        read_mimic(root)


def _parse(configure: object, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)  # type: ignore[operator]
    return parser.parse_args(list(argv))


def test_train_defaults_to_the_chexpert_labels(tmp_path: Path) -> None:
    """Without --labels `dicom-node train --data` on a MIMIC-CXR-JPG root uses CheXpert's."""
    root = write_mimic(tmp_path / "mimic")
    args = _parse(models.configure_train, "--data", str(root), "--out", str(tmp_path / "b"))
    assert model_commands.default_labels(args) == CHEXPERT_LABELS


def test_evaluate_a_bundle_on_mimic(tmp_path: Path) -> None:
    """`dicom-node evaluate BUNDLE DIR` scores a bundle with NIH labels on the official test split
    (2 frontal images); Effusion reads Pleural Effusion (one positive, one negative)."""
    bundle = tiny_bundle(tmp_path / "b", input_size=32)
    root = write_mimic(tmp_path / "mimic")
    argv = [str(bundle.path), str(root), "--out", str(tmp_path / "e")]
    assert models.run_evaluate(_parse(models.configure_evaluate, *argv)) == 0
    report = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert report["n_images"] == 2 and "MIMIC-CXR-JPG" in report["data"]
    effusion = report["labels"]["Effusion"]
    assert (effusion["positives"], effusion["negatives"]) == (1, 1)
    cardiomegaly = report["labels"]["Cardiomegaly"]
    assert (cardiomegaly["positives"], cardiomegaly["negatives"]) == (1, 1)

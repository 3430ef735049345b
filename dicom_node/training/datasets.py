"""Labelled radiographs for training and evaluation: NIH ChestX-ray14, DICOM folders with a CSV."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread

log = logging.getLogger(__name__)

CXR14_ENTRY = "Data_Entry_2017.csv"
CXR14_TRAIN_VAL = "train_val_list.txt"
CXR14_TEST = "test_list.txt"
# The 14 findings of NIH ChestX-ray14, in the order of its label file's columns.
CXR14_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

DICOM_LABELS_CSV = "labels.csv"
NO_FINDING = "No Finding"
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A data folder or labels file the trainer cannot use; the message names file and row."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Record:
    """One labelled image file: its path, the findings present and the patient it belongs to."""

    path: Path
    findings: frozenset[str]
    patient_id: str

    def target(self, labels: Sequence[str]) -> list[float]:
        return [float(label in self.findings) for label in labels]


@dataclass(frozen=True, kw_only=True, slots=True)
class Split:
    """Records for training, validation (patients disjoint from training) and testing."""

    train: tuple[Record, ...]
    val: tuple[Record, ...]
    test: tuple[Record, ...]
    description: str

    def part(self, name: str) -> tuple[Record, ...]:
        """'train', 'val', 'test' or 'all'."""
        if name == "all":
            return self.train + self.val + self.test
        if name not in SPLITS:
            raise ValueError(f"split must be one of {(*SPLITS, 'all')}, not {name!r}")
        parts: tuple[Record, ...] = getattr(self, name)
        return parts


def parse_findings(text: str, where: str) -> frozenset[str]:
    """NIH 'Finding Labels' ('Effusion|Mass', 'No Finding' or empty) as a set of labels."""
    found = {part.strip() for part in text.split("|") if part.strip()} - {NO_FINDING}
    unknown = found - set(CXR14_LABELS)
    if unknown:
        raise DatasetError(f"{where}: unknown finding label(s) {sorted(unknown)}")
    return frozenset(found)


def split_by_patient(
    records: Sequence[Record], fraction: float, seed: int
) -> tuple[tuple[Record, ...], tuple[Record, ...]]:
    """(train, val): a seeded `fraction` of the patients (at least one, if there are two or
    more; with a single patient val stays empty) go to val."""
    patients = sorted({r.patient_id for r in records})
    if len(patients) < 2:
        return tuple(records), ()
    n_val = min(len(patients) - 1, max(1, math.ceil(fraction * len(patients))))
    order = np.random.default_rng(seed).permutation(len(patients))
    val_patients = {patients[i] for i in order[:n_val]}
    train = tuple(r for r in records if r.patient_id not in val_patients)
    val = tuple(r for r in records if r.patient_id in val_patients)
    return train, val


# ---- NIH ChestX-ray14 -----------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc


def _require(rows: list[dict[str, str]], columns: Iterable[str], path: Path) -> None:
    header = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in header]
    if not rows or missing:
        raise DatasetError(f"{path}: no rows, or columns {missing} missing")


def _image_index(root: Path) -> dict[str, Path]:
    """File name -> path of every PNG under the images*/ folders (any nesting)."""
    found: dict[str, Path] = {}
    for folder in sorted(root.glob("images*")):
        for path in folder.rglob("*.png"):
            found.setdefault(path.name, path)
    return found


def _name_list(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the official split list: {exc}") from exc


def read_chestxray14(root: Path, *, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """The NIH ChestX-ray14 layout: Data_Entry_2017.csv, images*/ folders and the official
    train_val_list.txt / test_list.txt; validation patients drawn from train_val."""
    entry = root / CXR14_ENTRY
    rows = _read_csv(entry)
    _require(rows, ("Image Index", "Finding Labels", "Patient ID"), entry)
    images = _image_index(root)
    records: dict[str, Record] = {}
    for number, row in enumerate(rows, start=2):
        name = row["Image Index"].strip()
        if name in images:
            findings = parse_findings(row["Finding Labels"], f"{entry} line {number}")
            records[name] = Record(
                path=images[name], findings=findings, patient_id=row["Patient ID"].strip()
            )
    missing = len(rows) - len(records)
    if missing:
        log.warning("%d of %d images of %s not found under images*/", missing, len(rows), entry)
    train_val = [records[n] for n in _name_list(root / CXR14_TRAIN_VAL) if n in records]
    test = tuple(records[n] for n in _name_list(root / CXR14_TEST) if n in records)
    train, val = split_by_patient(train_val, val_fraction, seed)
    description = (
        f"NIH ChestX-ray14 ({root.name}): official train_val list split by patient "
        f"({len(train)} training, {len(val)} validation images, seed {seed}); "
        f"official test list: {len(test)} images"
    )
    return Split(train=train, val=val, test=test, description=description)


# ---- DICOM folder with a labels CSV ---------------------------------------------------------


def _row_findings(row: Mapping[str, str], where: str) -> frozenset[str]:
    """From a 'labels' column (NIH style, '|'-separated) or one 0/1 column per label."""
    for column in ("labels", "Finding Labels"):
        if column in row:
            return parse_findings(row[column] or "", where)
    present = set()
    for label in CXR14_LABELS:
        value = (row.get(label) or "0").strip()
        if value not in ("0", "1"):
            raise DatasetError(f"{where}: column {label!r} must be 0 or 1, not {value!r}")
        if value == "1":
            present.add(label)
    return frozenset(present)


def _dicom_record(root: Path, row: Mapping[str, str], where: str) -> tuple[Record, str]:
    path = root / (row.get("file") or "").strip()
    if not path.is_file():
        raise DatasetError(f"{where}: file {path} not found")
    patient = (row.get("patient_id") or "").strip()
    if not patient:
        patient = str(dcmread(path, stop_before_pixels=True).get("PatientID", "")) or path.name
    split = (row.get("split") or "").strip().lower()
    if split and split not in SPLITS:
        raise DatasetError(f"{where}: split must be one of {SPLITS}, not {split!r}")
    return Record(path=path, findings=_row_findings(row, where), patient_id=patient), split


def read_dicom_folder(
    root: Path, labels_csv: Path | None = None, *, val_fraction: float = 0.1, seed: int = 0
) -> Split:
    """DICOM files under `root` listed in a CSV (default root/labels.csv): a 'file' column
    (relative to root), labels as a 'labels' column or one 0/1 column per label, optional
    'patient_id' (else the header's PatientID) and 'split' (train/val/test; else by patient)."""
    path = labels_csv or root / DICOM_LABELS_CSV
    rows = _read_csv(path)
    _require(rows, ("file",), path)
    pairs = [_dicom_record(root, row, f"{path} line {n}") for n, row in enumerate(rows, start=2)]
    if any(split for _, split in pairs):
        parts = {name: tuple(r for r, s in pairs if s == name) for name in SPLITS}
        train, val, test = parts["train"], parts["val"], parts["test"]
    else:
        train, val = split_by_patient([r for r, _ in pairs], val_fraction, seed)
        test = ()
    description = (
        f"DICOM folder {root.name} with {path.name}: {len(train)} training, {len(val)} "
        f"validation, {len(test)} test images (patients disjoint, seed {seed})"
    )
    return Split(train=train, val=val, test=test, description=description)


def read_layout(
    data: Path, labels_csv: Path | None = None, *, val_fraction: float = 0.1, seed: int = 0
) -> Split:
    """ChestX-ray14 when `data` holds Data_Entry_2017.csv, else a DICOM folder with a CSV."""
    if (data / CXR14_ENTRY).is_file():
        return read_chestxray14(data, val_fraction=val_fraction, seed=seed)
    if labels_csv is not None or (data / DICOM_LABELS_CSV).is_file():
        return read_dicom_folder(data, labels_csv, val_fraction=val_fraction, seed=seed)
    raise DatasetError(
        f"{data}: neither {CXR14_ENTRY} (ChestX-ray14) nor {DICOM_LABELS_CSV} (DICOM folder) found"
    )

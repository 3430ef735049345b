"""Labelled radiographs for training and evaluation, in the layouts the data sets are downloaded
in: NIH ChestX-ray14, CheXpert (`chexpert`), MIMIC-CXR-JPG (`mimic`), and DICOM folders with a
labels CSV."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from pydicom import dcmread

from dicom_node.training.chexpert import UncertainPolicy, is_chexpert, read_chexpert
from dicom_node.training.mimic import is_mimic, read_mimic
from dicom_node.training.records import (
    SPLITS,
    DatasetError,
    Record,
    Split,
    read_csv,
    require_columns,
    split_by_patient,
)

__all__ = [
    "CXR14_ENTRIES",
    "CXR14_LABELS",
    "DatasetError",
    "Record",
    "Split",
    "parse_findings",
    "read_chestxray14",
    "read_dicom_folder",
    "read_layout",
    "split_by_patient",
]

log = logging.getLogger(__name__)

# The label file as NIH published it in 2017 and as re-issued in 2020 (corrected ages, "Patient
# Sex" for "Patient Gender"); the first one present is read.
CXR14_ENTRIES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
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


def parse_findings(text: str, where: str) -> frozenset[str]:
    """NIH 'Finding Labels' ('Effusion|Mass', 'No Finding' or empty) as a set of labels."""
    found = {part.strip() for part in text.split("|") if part.strip()} - {NO_FINDING}
    unknown = found - set(CXR14_LABELS)
    if unknown:
        raise DatasetError(f"{where}: unknown finding label(s) {sorted(unknown)}")
    return frozenset(found)


# ---- NIH ChestX-ray14 -----------------------------------------------------------------------


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


def chestxray14_entry(root: Path) -> Path | None:
    """The label file of a ChestX-ray14 folder (the 2020 edition first), or None."""
    return next((root / n for n in CXR14_ENTRIES if (root / n).is_file()), None)


def read_chestxray14(root: Path, *, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """The NIH ChestX-ray14 layout: Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv), PNGs
    (8- or 16-bit, grey or RGBA) under images*/ (e.g. images_001/images/) and the official
    train_val_list.txt / test_list.txt; validation patients drawn from train_val."""
    entry = chestxray14_entry(root) or root / CXR14_ENTRIES[-1]
    rows = read_csv(entry)
    require_columns(rows, ("Image Index", "Finding Labels", "Patient ID"), entry)
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
        f"NIH ChestX-ray14 ({root.name}, {entry.name}): official train_val list split by "
        f"patient ({len(train)} training, {len(val)} validation images, seed {seed}); "
        f"official test list: {len(test)} images"
    )
    return Split(train=train, val=val, test=test, description=description, labels=CXR14_LABELS)


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
    rows = read_csv(path)
    require_columns(rows, ("file",), path)
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
    return Split(train=train, val=val, test=test, description=description, labels=CXR14_LABELS)


def read_layout(
    data: Path,
    labels_csv: Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    uncertain: UncertainPolicy = "ignore",
    frontal_only: bool = True,
) -> Split:
    """ChestX-ray14 when `data` holds its label file, CheXpert when it holds train.csv or
    valid.csv with CheXpert's columns, MIMIC-CXR-JPG when it holds its metadata or labels CSV
    (for those two `uncertain` and `frontal_only` apply), else a DICOM folder with a labels
    CSV."""
    if chestxray14_entry(data) is not None:
        return read_chestxray14(data, val_fraction=val_fraction, seed=seed)
    if labels_csv is None and is_chexpert(data):
        return read_chexpert(
            data,
            uncertain=uncertain,
            frontal_only=frontal_only,
            val_fraction=val_fraction,
            seed=seed,
        )
    if labels_csv is None and is_mimic(data):
        return read_mimic(data, uncertain=uncertain, frontal_only=frontal_only)
    if labels_csv is not None or (data / DICOM_LABELS_CSV).is_file():
        return read_dicom_folder(data, labels_csv, val_fraction=val_fraction, seed=seed)
    raise DatasetError(
        f"{data}: neither {' nor '.join(CXR14_ENTRIES)} (ChestX-ray14), CheXpert's train.csv "
        f"or valid.csv, MIMIC-CXR-JPG's mimic-cxr-2.0.0-*.csv.gz, nor {DICOM_LABELS_CSV} "
        "(DICOM folder) found"
    )

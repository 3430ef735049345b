"""MIMIC-CXR-JPG as PhysioNet distributes it (v2.0.0, v2.1.0): the CSVs beside files/.

- `mimic-cxr-2.0.0-metadata.csv.gz`: one row per image (`dicom_id,subject_id,study_id,...,
  ViewPosition,...`); frontal means ViewPosition PA or AP.
- `mimic-cxr-2.0.0-split.csv.gz`: `dicom_id,study_id,subject_id,split`, the official split
  (`train`, `validate`, `test`), kept as it is.
- `mimic-cxr-2.0.0-chexpert.csv.gz` (or the NegBio labeller's `mimic-cxr-2.0.0-negbio.csv.gz`,
  same columns): one row per study, `subject_id,study_id` and CheXpert's 14 observations valued
  1.0, 0.0, -1.0 or blank, read as CheXpert's (`chexpert.row_labels`, the same uncertainty
  policies).
- images: `files/p{first two digits of subject_id}/p{subject_id}/s{study_id}/{dicom_id}.jpg`.

Each CSV may also be uncompressed (`.csv`). The patient is `subject_id`.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from pathlib import Path
from typing import Literal, get_args

from dicom_node.training.chexpert import (
    ANNOTATED,
    CHEXPERT_LABELS,
    UncertainPolicy,
    check_policy,
    row_labels,
)
from dicom_node.training.records import DatasetError, Record, Split, require_columns

log = logging.getLogger(__name__)

PREFIX = "mimic-cxr-2.0.0-"
METADATA, SPLIT = f"{PREFIX}metadata", f"{PREFIX}split"
Labeler = Literal["chexpert", "negbio"]
LABELERS: tuple[str, ...] = get_args(Labeler)
FRONTAL_VIEWS = frozenset({"PA", "AP"})
# Official split value -> ours.
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS = ("subject_id", "study_id", "No Finding", *CHEXPERT_LABELS)


def table(root: Path, stem: str) -> Path | None:
    """`root/<stem>.csv.gz`, else `root/<stem>.csv`, else None."""
    for name in (f"{stem}.csv.gz", f"{stem}.csv"):
        if (root / name).is_file():
            return root / name
    return None


def is_mimic(root: Path) -> bool:
    """True when `root` holds MIMIC-CXR-JPG's metadata or labels CSV (compressed or not)."""
    stems = (METADATA, *(f"{PREFIX}{labeler}" for labeler in LABELERS))
    return any(table(root, stem) is not None for stem in stems)


def _read(path: Path) -> list[dict[str, str]]:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", newline="", encoding="utf-8-sig") as f:
                return list(csv.DictReader(f))
        with path.open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except (OSError, EOFError, gzip.BadGzipFile, io.UnsupportedOperation) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc


def _required(root: Path, stem: str, columns: tuple[str, ...]) -> tuple[Path, list[dict[str, str]]]:
    path = table(root, stem)
    if path is None:
        raise DatasetError(f"{root}: MIMIC-CXR-JPG's {stem}.csv.gz (or {stem}.csv) not found")
    rows = _read(path)
    require_columns(rows, columns, path)
    return path, rows


def labels_file(root: Path, labeler: Labeler | None = None) -> Path:
    """The labels CSV of `labeler`, else CheXpert's, else NegBio's."""
    if labeler is not None and labeler not in LABELERS:
        raise DatasetError(f"labeler must be one of {LABELERS}, not {labeler!r}")
    for name in (labeler,) if labeler else LABELERS:
        path = table(root, f"{PREFIX}{name}")
        if path is not None:
            return path
    wanted = " or ".join(f"{PREFIX}{n}.csv.gz" for n in ((labeler,) if labeler else LABELERS))
    raise DatasetError(f"{root}: MIMIC-CXR-JPG's labels file {wanted} not found")


def image_path(root: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    """files/p10/p10000032/s50414267/<dicom_id>.jpg."""
    study = Path("files", f"p{subject_id[:2]}", f"p{subject_id}", f"s{study_id}")
    return root / study / f"{dicom_id}.jpg"


def _study_labels(
    path: Path, rows: list[dict[str, str]], policy: UncertainPolicy
) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """study_id -> (findings, unknown)."""
    studies = {}
    for number, row in enumerate(rows, start=2):
        studies[row["study_id"].strip()] = row_labels(row, policy, f"{path} line {number}")
    return studies


def read_mimic(
    root: Path,
    *,
    uncertain: UncertainPolicy = "ignore",
    frontal_only: bool = True,
    labeler: Labeler | None = None,
) -> Split:
    """The MIMIC-CXR-JPG layout, in its official split (train, validate -> val, test); frontal
    views (PA, AP) only unless `frontal_only` is False; labels of the CheXpert labeller unless
    `labeler` is "negbio" (or only NegBio's file is there). Images of studies without labels,
    without a split row or missing on disk are left out."""
    check_policy(uncertain)
    labels_path = labels_file(root, labeler)
    label_rows = _read(labels_path)
    require_columns(label_rows, LABEL_COLUMNS, labels_path)
    studies = _study_labels(labels_path, label_rows, uncertain)
    split_path, split_rows = _required(root, SPLIT, SPLIT_COLUMNS)
    parts: dict[str, str] = {}
    for number, row in enumerate(split_rows, start=2):
        value = row["split"].strip()
        if value not in SPLIT_NAMES:
            raise DatasetError(
                f"{split_path} line {number}: split must be one of {tuple(SPLIT_NAMES)}, "
                f"not {value!r}"
            )
        parts[row["dicom_id"].strip()] = SPLIT_NAMES[value]
    metadata_path, images = _required(root, METADATA, METADATA_COLUMNS)
    found: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    missing = unlabelled = 0
    for row in images:
        if frontal_only and row["ViewPosition"].strip() not in FRONTAL_VIEWS:
            continue
        dicom_id, subject, study = (row[c].strip() for c in ("dicom_id", "subject_id", "study_id"))
        if study not in studies or dicom_id not in parts:
            unlabelled += 1
            continue
        path = image_path(root, subject, study, dicom_id)
        if not path.is_file():
            missing += 1
            continue
        findings, unknown = studies[study]
        record = Record(
            path=path, findings=findings, patient_id=subject, unknown=unknown, annotated=ANNOTATED
        )
        found[parts[dicom_id]].append(record)
    if missing:
        log.warning("%d images listed in %s not found under %s", missing, metadata_path, root)
    if unlabelled:
        log.info("%d images of %s without labels or split row left out", unlabelled, metadata_path)
    train, val, test = (tuple(found[name]) for name in ("train", "val", "test"))
    if not train and not val and not test:
        raise DatasetError(f"{root}: no MIMIC-CXR-JPG images found under files/")
    views = "frontal views" if frontal_only else "all views"
    description = (
        f"MIMIC-CXR-JPG ({root.name}, {views}, {labels_path.name}, uncertain labels "
        f"U-{uncertain.capitalize()}): official split, {len(train)} training, {len(val)} "
        f"validation, {len(test)} test images"
    )
    return Split(train=train, val=val, test=test, description=description, labels=CHEXPERT_LABELS)

"""CheXpert as Stanford distributes it: train.csv and valid.csv beside train/ and valid/.

Each CSV row is one image: `Path` (e.g. `CheXpert-v1.0-small/train/patient00001/study1/
view1_frontal.jpg`, relative to the folder that holds the data set's folder), `Frontal/Lateral`,
and one column per observation valued 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or blank
(not mentioned in the report, read as negative, as the CheXpert labeller's authors do). Uncertain
labels follow one policy of the CheXpert paper (Irvin et al., AAAI 2019):

- `ignore` (U-Ignore): the label is unknown for that image, left out of the loss and metrics;
- `zeros` (U-Zeros): negative;
- `ones` (U-Ones): positive.

Training and validation images come from train.csv (patients split, seeded); valid.csv, labelled
by a consensus of radiologists and never uncertain, is the test split.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

from dicom_node.training.records import (
    DatasetError,
    Record,
    Split,
    read_csv,
    require_columns,
    split_by_patient,
)

log = logging.getLogger(__name__)

CHEXPERT_TRAIN, CHEXPERT_VALID = "train.csv", "valid.csv"
# The 13 observations of the CheXpert labeller other than "No Finding", in the CSV's order.
CHEXPERT_LABELS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
# The five observations of the CheXpert competition.
CHEXPERT_COMPETITION: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)
# CheXpert label -> the NIH ChestX-ray14 label of the same concept, so that a ChestX-ray14 bundle
# can be scored on CheXpert; the other labels of the two sets are spelt alike or have no match.
NIH_ALIASES: Mapping[str, str] = {"Pleural Effusion": "Effusion"}
COLUMNS = ("Path", "Frontal/Lateral", "No Finding", *CHEXPERT_LABELS)
ANNOTATED = frozenset(CHEXPERT_LABELS) | frozenset(NIH_ALIASES.values())

UncertainPolicy = Literal["ignore", "zeros", "ones"]
UNCERTAIN_POLICIES: tuple[str, ...] = get_args(UncertainPolicy)
_VALUES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": 0}
_PATIENT = re.compile(r"patient\d+")


def is_chexpert(root: Path) -> bool:
    """True when `root` holds a train.csv or valid.csv with CheXpert's columns."""
    for name in (CHEXPERT_TRAIN, CHEXPERT_VALID):
        path = root / name
        if path.is_file():
            with path.open(encoding="utf-8-sig") as f:
                header = f.readline()
            return all(column in header for column in ("Path", "Frontal/Lateral", "AP/PA"))
    return False


def _image_path(root: Path, relative: str) -> Path | None:
    """CSV paths start with the data set's folder name: look beside `root`, inside it, and
    inside it without that first part (a renamed folder)."""
    parts = Path(relative).parts
    for candidate in (root.parent / relative, root / relative, root.joinpath(*parts[1:])):
        if candidate.is_file():
            return candidate
    return None


def check_policy(uncertain: str) -> None:
    """A DatasetError unless `uncertain` is one of UNCERTAIN_POLICIES."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise DatasetError(f"uncertain must be one of {UNCERTAIN_POLICIES}, not {uncertain!r}")


def row_labels(
    row: Mapping[str, str], policy: UncertainPolicy, where: str
) -> tuple[frozenset[str], frozenset[str]]:
    """(findings, unknown) of one row with a column per CHEXPERT_LABELS (valued 1.0, 0.0, -1.0
    or blank) under the uncertainty policy; NIH aliases follow their CheXpert label. Shared by
    every data set the CheXpert labeller labelled (CheXpert, MIMIC-CXR-JPG)."""
    present, unknown = set(), set()
    for label in CHEXPERT_LABELS:
        text = (row.get(label) or "").strip()
        if text not in _VALUES:
            raise DatasetError(f"{where}: {label!r} must be 1.0, 0.0, -1.0 or blank, not {text!r}")
        value = _VALUES[text]
        if value == -1:
            if policy == "ones":
                value = 1
            elif policy == "ignore":
                unknown.add(label)
        if value == 1:
            present.add(label)
    for label, alias in NIH_ALIASES.items():
        if label in present:
            present.add(alias)
        if label in unknown:
            unknown.add(alias)
    return frozenset(present), frozenset(unknown)


def _records(root: Path, name: str, *, policy: UncertainPolicy, frontal_only: bool) -> list[Record]:
    path = root / name
    if not path.is_file():
        return []
    rows = read_csv(path)
    require_columns(rows, COLUMNS, path)
    records, missing = [], 0
    for number, row in enumerate(rows, start=2):
        where = f"{path} line {number}"
        if frontal_only and row["Frontal/Lateral"].strip() != "Frontal":
            continue
        image = _image_path(root, row["Path"].strip())
        if image is None:
            missing += 1
            continue
        findings, unknown = row_labels(row, policy, where)
        patient = _PATIENT.search(row["Path"])
        records.append(
            Record(
                path=image,
                findings=findings,
                patient_id=patient.group(0) if patient else image.parent.parent.name,
                unknown=unknown,
                annotated=ANNOTATED,
            )
        )
    if missing:
        log.warning("%d images listed in %s not found under %s", missing, path, root)
    return records


def read_chexpert(
    root: Path,
    *,
    uncertain: UncertainPolicy = "ignore",
    frontal_only: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """The CheXpert layout: train.csv split by patient into training and validation, valid.csv
    as the test split; frontal views only unless `frontal_only` is False."""
    check_policy(uncertain)
    train_val = _records(root, CHEXPERT_TRAIN, policy=uncertain, frontal_only=frontal_only)
    test = tuple(_records(root, CHEXPERT_VALID, policy=uncertain, frontal_only=frontal_only))
    if not train_val and not test:
        raise DatasetError(f"{root}: no CheXpert images found ({CHEXPERT_TRAIN}, {CHEXPERT_VALID})")
    train, val = split_by_patient(train_val, val_fraction, seed)
    views = "frontal views" if frontal_only else "all views"
    description = (
        f"CheXpert ({root.name}, {views}, uncertain labels U-{uncertain.capitalize()}): "
        f"{CHEXPERT_TRAIN} split by patient ({len(train)} training, {len(val)} validation "
        f"images, seed {seed}); {CHEXPERT_VALID} as the test split: {len(test)} images"
    )
    return Split(train=train, val=val, test=test, description=description, labels=CHEXPERT_LABELS)

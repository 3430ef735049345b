"""Labelled images as the data sets give them: records, splits by patient, the CSV helpers."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A data folder or labels file the trainer cannot use; the message names file and row."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Record:
    """One labelled image file: its path, the findings present and the patient it belongs to.

    `unknown` names labels whose truth this image does not give (CheXpert's uncertain labels
    under U-Ignore); `annotated`, where set, the labels its data set reads at all. Both are NaN
    targets, which the loss and the metrics leave out.
    """

    path: Path
    findings: frozenset[str]
    patient_id: str
    unknown: frozenset[str] = frozenset()
    annotated: frozenset[str] | None = None

    def target(self, labels: Sequence[str]) -> list[float]:
        return [self._value(label) for label in labels]

    def _value(self, label: str) -> float:
        if label in self.unknown or (self.annotated is not None and label not in self.annotated):
            return math.nan
        return float(label in self.findings)


@dataclass(frozen=True, kw_only=True, slots=True)
class Split:
    """Records for training, validation (patients disjoint from training) and testing, and the
    labels their data set annotates, in its order."""

    train: tuple[Record, ...]
    val: tuple[Record, ...]
    test: tuple[Record, ...]
    description: str
    labels: tuple[str, ...] = ()

    def part(self, name: str) -> tuple[Record, ...]:
        """'train', 'val', 'test' or 'all'."""
        if name == "all":
            return self.train + self.val + self.test
        if name not in SPLITS:
            raise ValueError(f"split must be one of {(*SPLITS, 'all')}, not {name!r}")
        parts: tuple[Record, ...] = getattr(self, name)
        return parts


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


def read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc


def require_columns(rows: list[dict[str, str]], columns: Iterable[str], path: Path) -> None:
    header = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in header]
    if not rows or missing:
        raise DatasetError(f"{path}: no rows, or columns {missing} missing")

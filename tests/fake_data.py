"""Tiny fake data sets in the two training layouts, drawn from phantoms with known findings."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from dicom_node.synthetic.phantom_dicom import phantom_dataset
from dicom_node.synthetic.phantoms import make_phantom, random_findings

CXR14_COLUMNS = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
]


def _findings(rng: np.random.Generator) -> list[str]:
    return random_findings(rng, prevalence=0.3)


def write_chestxray14(
    root: Path, *, patients: int = 8, per_patient: int = 2, size: int = 96, seed: int = 0
) -> dict[str, list[str]]:
    """An NIH ChestX-ray14 layout: 8-bit PNGs in images_001/images and images_002/images,
    Data_Entry_2017.csv, and train_val_list.txt / test_list.txt (the last two patients test)."""
    rng = np.random.default_rng(seed)
    rows, lists = [], {"train_val": [], "test": []}
    for p in range(1, patients + 1):
        for k in range(per_patient):
            name = f"{p:08d}_{k:03d}.png"
            findings = _findings(rng)
            phantom = make_phantom(rng, findings=findings, size=(size, size))
            folder = root / f"images_{1 + p % 2:03d}" / "images"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.rint(phantom.image * 255).astype(np.uint8)).save(folder / name)
            labels = "|".join(findings) or "No Finding"
            rows.append([name, labels, k, p, 50, "F", "PA", size, size, 0.143, 0.143])
            lists["test" if p > patients - 2 else "train_val"].append(name)
    with (root / "Data_Entry_2017.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CXR14_COLUMNS)
        writer.writerows(rows)
    (root / "train_val_list.txt").write_text("\n".join(lists["train_val"]) + "\n")
    (root / "test_list.txt").write_text("\n".join(lists["test"]) + "\n")
    return lists


def write_dicom_folder(
    root: Path,
    *,
    patients: int = 6,
    per_patient: int = 2,
    size: int = 96,
    seed: int = 1,
    one_hot: bool = False,
    split: bool = False,
) -> Path:
    """DICOM DX phantoms under root/<patient>/ and root/labels.csv: 'file' plus NIH-style
    'labels' (or one 0/1 column per label), optionally a 'split' column."""
    from dicom_node.synthetic.phantoms import LABELS

    rng = np.random.default_rng(seed)
    rows: list[dict[str, str]] = []
    for p in range(patients):
        for k in range(per_patient):
            findings = _findings(rng)
            phantom = make_phantom(rng, findings=findings, size=(size, size))
            ds = phantom_dataset(
                phantom,
                patient_id=f"PAT{p:03d}",
                patient_name="Fake^Patient",
                study_uid=f"1.2.3.{p}",
            )
            path = root / f"PAT{p:03d}" / f"{k}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            row = {"file": str(path.relative_to(root))}
            if one_hot:
                row.update({label: str(int(label in findings)) for label in LABELS})
            else:
                row["labels"] = "|".join(findings) or "No Finding"
            if split:
                row["split"] = ("test", "val", "train", "train", "train", "train")[p % 6]
            rows.append(row)
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "labels.csv"

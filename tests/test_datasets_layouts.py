"""The data sets as they are downloaded: NIH ChestX-ray14 (the 2020 label file, images_0NN/images/,
RGBA and 16-bit PNGs) and CheXpert (train.csv / valid.csv with its real columns, frontal views,
uncertain labels by policy), read into training and evaluation."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dicom_node.cli import model_commands, models
from dicom_node.model.bundle import load_bundle
from dicom_node.model.preprocess import InputSpec, load_image_file
from dicom_node.testing import tiny_bundle
from dicom_node.training.chexpert import CHEXPERT_LABELS, read_chexpert
from dicom_node.training.datasets import DatasetError, read_layout
from dicom_node.training.samples import RecordDataset

# The columns of CheXpert's train.csv and valid.csv, as distributed.
CHEXPERT_HEADER = [
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding",
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
]  # fmt: skip
V2020_HEADER = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Sex",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
]  # fmt: skip
SPEC = InputSpec(size=32, mean=0.5, std=0.25)


def _grey(seed: int, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.1, 0.9, size)[None, :] * np.ones((size, 1))
    return np.clip(ramp + rng.normal(0, 0.05, (size, size)), 0, 1)


def write_nih(root: Path, patients: int = 6) -> dict[str, np.ndarray]:
    """Data_Entry_2017_v2020.csv, images_001/images and images_002/images, the official lists;
    images alternate 8-bit grey, RGBA and 16-bit grey PNGs. Returns name -> image in [0, 1]."""
    rows, images, lists = [], {}, {"train_val_list.txt": [], "test_list.txt": []}
    for p in range(1, patients + 1):
        for k in range(2):
            name = f"{p:08d}_{k:03d}.png"
            image = _grey(p * 10 + k)
            folder = root / f"images_{1 + (p > patients // 2):03d}" / "images"
            folder.mkdir(parents=True, exist_ok=True)
            kind = (p + k) % 3
            if kind == 0:
                Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(folder / name)
            elif kind == 1:
                grey = np.rint(image * 255).astype(np.uint8)
                rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
                Image.fromarray(rgba, "RGBA").save(folder / name)
            else:
                Image.fromarray(np.rint(image * 65535).astype(np.uint16)).save(folder / name)
            images[name] = image
            labels = "Effusion|Mass" if k else "No Finding"
            rows.append([name, labels, k, p, 60, "M", "PA", 40, 40, 0.143, 0.143])
            lists["test_list.txt" if p == patients else "train_val_list.txt"].append(name)
    with (root / "Data_Entry_2017_v2020.csv").open("w", newline="") as f:
        csv.writer(f).writerows([V2020_HEADER, *rows])
    for name, names in lists.items():
        (root / name).write_text("\n".join(names) + "\n")
    return images


def test_nih_2020_label_file_and_png_kinds(tmp_path: Path) -> None:
    """The 2020 label file and images_0NN/images/ are found; RGBA and 16-bit PNGs read as the
    same grey image as the 8-bit one (within one 8-bit step), into model inputs."""
    images = write_nih(tmp_path)
    split = read_layout(tmp_path)
    assert "Data_Entry_2017_v2020.csv" in split.description
    assert len(split.train) + len(split.val) == 10 and len(split.test) == 2
    modes = set()
    for record in split.part("all"):
        with Image.open(record.path) as img:
            modes.add(img.mode)
        shown = load_image_file(record.path)
        assert np.abs(shown - images[record.path.name]).max() <= 1 / 255 + 1e-6
        assert record.findings == ({"Effusion", "Mass"} if record.path.stem[-1] == "1" else set())
    assert {"L", "RGBA", "I;16"} <= modes
    x, y = RecordDataset(split.test, labels=("Effusion", "Mass"), spec=SPEC)[1]
    assert x.shape == (1, 32, 32) and y.tolist() == [1.0, 1.0]


def write_chexpert(root: Path, *, folder: str = "CheXpert-v1.0-small") -> Path:
    """CheXpert-v1.0-small/{train,valid}.csv with the real columns and JPEGs at the paths they
    name (relative to the folder holding the data set's folder); returns the data set folder."""
    data = root / folder
    rows = {"train": [], "valid": []}
    for p in range(1, 9):
        part = "valid" if p > 6 else "train"
        for view in ("frontal", "lateral"):
            number = 2 if view == "lateral" else 1
            rel = f"CheXpert-v1.0-small/{part}/patient{p:05d}/study1/view{number}_{view}.jpg"
            image = data / rel.split("/", 1)[1]
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.rint(_grey(p) * 255).astype(np.uint8)).save(image)
            values = dict.fromkeys(CHEXPERT_LABELS, "")
            values["Cardiomegaly"] = "1.0" if p % 2 else "0.0"
            values["Edema"] = "-1.0" if p in (1, 2) else ("1.0" if p == 3 else "")
            values["Pleural Effusion"] = "1.0" if p in (4, 7) else "0.0"
            values["Support Devices"] = "1.0"
            rows[part].append(
                {
                    "Path": rel,
                    "Sex": "Female",
                    "Age": "68",
                    "Frontal/Lateral": view.capitalize(),
                    "AP/PA": "AP" if view == "frontal" else "",
                    "No Finding": "",
                    **values,
                }
            )
    for part, entries in rows.items():
        with (data / f"{part}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CHEXPERT_HEADER)
            writer.writeheader()
            writer.writerows(entries)
    return data


@pytest.mark.parametrize("folder", ["CheXpert-v1.0-small", "chexpert_renamed"])
def test_chexpert_layout_frontal_views_and_splits(tmp_path: Path, folder: str) -> None:
    """Frontal views only by default (lateral ones with frontal_only=False); train.csv gives
    training and validation patients, valid.csv the test split; patients from the paths; the
    data set folder may be renamed."""
    data = write_chexpert(tmp_path, folder=folder)
    split = read_layout(data)
    assert split.labels == CHEXPERT_LABELS and "U-Ignore" in split.description
    assert len(split.train) + len(split.val) == 6 and len(split.test) == 2
    assert all(r.path.name.endswith("_frontal.jpg") and r.path.is_file() for r in split.part("all"))
    assert {r.patient_id for r in split.test} == {"patient00007", "patient00008"}
    assert {r.patient_id for r in split.train}.isdisjoint({r.patient_id for r in split.val})
    assert len(read_chexpert(data, frontal_only=False).part("all")) == 16


@pytest.mark.parametrize(
    ("policy", "edema"),
    [("ignore", [math.nan, math.nan, 1.0]), ("zeros", [0, 0, 1]), ("ones", [1, 1, 1])],
)
def test_chexpert_uncertain_labels_follow_the_policy(
    tmp_path: Path, policy: str, edema: list[float]
) -> None:
    """-1.0 is unknown (U-Ignore), negative (U-Zeros) or positive (U-Ones); blank is negative;
    NIH's Effusion reads CheXpert's Pleural Effusion; labels CheXpert lacks are unknown."""
    data = write_chexpert(tmp_path)
    split = read_chexpert(data, uncertain=policy)  # type: ignore[arg-type]
    by_patient = {r.patient_id: r for r in split.part("all")}
    labels = ("Edema", "Cardiomegaly", "Effusion", "Pleural Effusion", "Mass")
    targets = {p: by_patient[f"patient{p:05d}"].target(labels) for p in (1, 2, 3, 4, 5)}
    assert [targets[p][0] for p in (1, 2, 3)] == pytest.approx(edema, nan_ok=True)
    assert targets[4][:4] == [0.0, 0.0, 1.0, 1.0] and targets[5][:4] == [0.0, 1.0, 0.0, 0.0]
    assert all(math.isnan(t[4]) for t in targets.values())  # Mass: not a CheXpert label


def test_chexpert_bad_value_names_the_line(tmp_path: Path) -> None:
    data = write_chexpert(tmp_path)
    text = (data / "train.csv").read_text().replace(",1.0,", ",yes,", 1)
    (data / "train.csv").write_text(text)
    with pytest.raises(DatasetError, match=r"train\.csv line 2: .* not 'yes'"):
        read_chexpert(data)


def _parse(configure: object, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)  # type: ignore[operator]
    return parser.parse_args(list(argv))


def test_train_on_chexpert_with_uncertain_labels_ignored(tmp_path: Path) -> None:
    """Without --labels a CheXpert folder trains on CheXpert's labels; one epoch with U-Ignore
    (NaN targets masked out of the loss) on coded labels writes a loadable bundle."""
    data = write_chexpert(tmp_path)
    out = tmp_path / "bundle"
    fast = ["--epochs", "1", "--batch-size", "2", "--input-size", "32", "--no-progress"]
    tiny = ["--init-features", "8", "--growth-rate", "4", "--mlflow", "off"]
    args = _parse(models.configure_train, "--data", str(data), "--out", str(out), *fast, *tiny)
    assert model_commands.default_labels(args) == CHEXPERT_LABELS
    labels = "Cardiomegaly,Edema,Atelectasis"
    args = _parse(
        models.configure_train,
        "--data",
        str(data),
        "--out",
        str(out),
        "--labels",
        labels,
        *fast,
        *tiny,
    )
    assert models.run_train(args) == 0
    bundle = load_bundle(out)
    assert bundle.labels == ("Cardiomegaly", "Edema", "Atelectasis")
    section = json.loads((out / "configs" / "metadata.json").read_text())["dicom_node"]
    assert "CheXpert" in section["training_data"] and "U-Ignore" in section["training_data"]
    with pytest.raises(ValueError, match=r"codes\.py"):
        model_commands._check_coded(("Support Devices-like",))


def test_evaluate_a_chestxray14_bundle_on_chexpert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bundle with NIH labels scores on CheXpert's valid.csv (the test split); positives count
    only known labels (U-Zeros here), Effusion through Pleural Effusion."""
    bundle = tiny_bundle(tmp_path / "b", input_size=32)
    data = write_chexpert(tmp_path)
    argv = [str(bundle.path), str(data), "--uncertain", "zeros", "--out", str(tmp_path / "e")]
    assert models.run_evaluate(_parse(models.configure_evaluate, *argv)) == 0
    report = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert report["n_images"] == 2 and "CheXpert" in report["data"]
    effusion = report["labels"]["Effusion"]
    assert (effusion["positives"], effusion["negatives"]) == (1, 1)
    assert torch.isfinite(torch.tensor(effusion["auroc"]))

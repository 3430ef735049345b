"""Reading the training layouts: NIH ChestX-ray14 and a DICOM folder with a labels CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dicom_node.model.preprocess import InputSpec, prepare, read_display
from dicom_node.training.datasets import (
    DatasetError,
    Record,
    parse_findings,
    read_chestxray14,
    read_dicom_folder,
    read_layout,
    split_by_patient,
)
from dicom_node.training.samples import Augment, RecordDataset, Shifted, augment, shift
from tests.fake_data import write_chestxray14, write_dicom_folder

SPEC = InputSpec(size=64, mean=0.5, std=0.25)


def test_findings_parse_like_nih_and_unknown_labels_fail() -> None:
    """'A|B' gives both labels, 'No Finding' and '' none; a misspelt label is an error."""
    assert parse_findings("Effusion|Mass", "x") == {"Effusion", "Mass"}
    assert parse_findings("No Finding", "x") == frozenset()
    assert parse_findings("", "x") == frozenset()
    with pytest.raises(DatasetError, match="Pleural Thickening"):
        parse_findings("Pleural Thickening", "file line 3")


def test_split_by_patient_keeps_patients_apart() -> None:
    """No patient has images on both sides; the split is seeded and never empties a side."""
    records = [
        Record(path=Path(f"{i}.png"), findings=frozenset(), patient_id=str(i % 7))
        for i in range(30)
    ]
    train, val = split_by_patient(records, 0.2, seed=3)
    assert {r.patient_id for r in train}.isdisjoint({r.patient_id for r in val})
    assert len(train) + len(val) == 30 and train and val
    assert split_by_patient(records, 0.2, seed=3) == (train, val)
    assert split_by_patient(records[:2], 0.0, seed=0)[1]  # at least one validation patient
    assert split_by_patient(records[:1], 0.5, seed=0) == (tuple(records[:1]), ())


def test_chestxray14_layout(tmp_path: Path) -> None:
    """Official test list is the test split; train_val is split by patient; labels match CSV."""
    lists = write_chestxray14(tmp_path, patients=8, per_patient=2)
    split = read_layout(tmp_path)
    assert sorted(r.path.name for r in split.test) == sorted(lists["test"])
    assert sorted(r.path.name for r in split.train + split.val) == sorted(lists["train_val"])
    assert {r.patient_id for r in split.train}.isdisjoint({r.patient_id for r in split.val})
    with (tmp_path / "Data_Entry_2017.csv").open() as f:
        truth = {row["Image Index"]: row["Finding Labels"] for row in csv.DictReader(f)}
    for record in split.part("all"):
        assert record.findings == parse_findings(truth[record.path.name], "x")
    assert "ChestX-ray14" in split.description


def test_chestxray14_tolerates_missing_images(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Images listed but absent (a partial download) are left out with a warning."""
    write_chestxray14(tmp_path, patients=6, per_patient=2)
    next(tmp_path.glob("images_*/images/*.png")).unlink()
    split = read_chestxray14(tmp_path)
    assert len(split.part("all")) == 11
    assert "not found" in caplog.text


@pytest.mark.parametrize(("one_hot", "with_split"), [(False, False), (True, True)])
def test_dicom_folder_layout(tmp_path: Path, one_hot: bool, with_split: bool) -> None:
    """Labels as a 'labels' column or one-hot columns; patients from the header; 'split' obeyed."""
    write_dicom_folder(tmp_path, patients=6, per_patient=2, one_hot=one_hot, split=with_split)
    split = read_layout(tmp_path)
    assert len(split.part("all")) == 12
    assert {r.patient_id for r in split.train}.isdisjoint({r.patient_id for r in split.val})
    assert all(r.patient_id.startswith("PAT") for r in split.part("all"))
    if with_split:
        assert (len(split.train), len(split.val), len(split.test)) == (8, 2, 2)
    else:
        assert not split.test and split.train and split.val


def test_dicom_folder_errors_name_file_and_line(tmp_path: Path) -> None:
    """A missing file or a bad 0/1 value is reported with the CSV line."""
    csv_path = write_dicom_folder(tmp_path, patients=2, per_patient=1, one_hot=True)
    text = csv_path.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([text[0], text[1].replace(".dcm", ".xyz")]) + "\n")
    with pytest.raises(DatasetError, match=r"bad\.csv line 2: file .* not found"):
        read_dicom_folder(tmp_path, bad)
    with pytest.raises(DatasetError, match="neither"):
        read_layout(tmp_path / "PAT000")


def test_record_dataset_uses_the_node_preprocessing(tmp_path: Path) -> None:
    """A PNG and a DICOM file become exactly the tensors preprocess.prepare makes; targets
    follow the requested label order."""
    write_chestxray14(tmp_path / "cxr", patients=3, per_patient=1)
    write_dicom_folder(tmp_path / "dcm", patients=2, per_patient=1)
    labels = ("Mass", "Effusion")
    for split in (read_layout(tmp_path / "cxr"), read_layout(tmp_path / "dcm")):
        record = split.part("all")[0]
        dataset = RecordDataset([record], labels=labels, spec=SPEC)
        x, y = dataset[0]
        expected, _ = prepare(read_display(record.path), SPEC)
        assert torch.equal(x, expected)
        assert y.tolist() == [float(label in record.findings) for label in labels]
        assert dataset.targets().shape == (1, 2)


def test_augmentation_never_flips() -> None:
    """Augmented inputs keep a left-bright image bright on the left, and stay close to it."""
    image = np.zeros((64, 64), np.float32)
    image[:, :28] = 1.0
    x, _ = prepare(image, SPEC)
    torch.manual_seed(0)
    for _ in range(20):
        moved = augment(x, SPEC, Augment())
        shown = moved * SPEC.std + SPEC.mean
        assert shown[0, :, :24].mean() > 0.7 and shown[0, :, 40:].mean() < 0.2
        assert moved.shape == x.shape


def test_shift_moves_whole_pixels_and_replicates_the_edges() -> None:
    """shift() moves every pixel by exactly (dy, dx), copies no value that was not there (the
    edge rows and columns fill what comes into view), and (0, 0) is the identity."""
    x = torch.arange(1.0, 1.0 + 8 * 8).view(1, 8, 8)
    moved = shift(x, 2, -3)
    assert torch.equal(moved[:, 2:, :5], x[:, :6, 3:])
    assert torch.equal(moved[:, :2, :5], x[:, :1, 3:].expand(1, 2, 5))  # top row replicated
    assert torch.equal(moved[:, 2:, 5:], x[:, :6, 7:].expand(1, 6, 3))  # right column replicated
    assert torch.equal(shift(x, 0, 0), x)


def test_shifted_dataset_moves_images_not_targets() -> None:
    """Shifted gives each read a fresh offset within max_pixels, keeps the target, and never
    changes an image's values (no resampling)."""
    image = torch.zeros(1, 16, 16)
    image[0, 8, 8] = 1.0
    base = TensorDataset(image[None], torch.tensor([[1.0, 0.0]]))
    data = Shifted(base, max_pixels=3)
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        x, y = data[0]
        assert y.tolist() == [1.0, 0.0] and x.sum() == 1.0 and set(x.unique().tolist()) == {0, 1}
        ((_, py, px),) = torch.nonzero(x).tolist()
        assert abs(py - 8) <= 3 and abs(px - 8) <= 3
        seen.add((py, px))
    assert len(seen) > 10 and len(data) == 1

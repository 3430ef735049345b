"""Readers' verdicts: stored on the newest analysis, charted, and exported by `dicom-node
feedback export` as the DICOM folder `dicom-node train` and `dicom-node evaluate` read, each
image's labels the model's calls corrected by the newest verdict per finding."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.cli import main
from dicom_node.model.bundle import load_bundle
from dicom_node.node import Node
from dicom_node.pipeline.feedback import (
    FeedbackError,
    agreement,
    corrected,
    export_labels,
    record_feedback,
)
from dicom_node.settings import Settings
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import Result
from dicom_node.synthetic.phantom_dicom import phantom_dataset
from dicom_node.synthetic.phantoms import make_phantom
from dicom_node.testing import DEMO_BUNDLE, node_settings
from tests.conftest import write_study
from tests.peers import storescu

pytestmark = pytest.mark.integration
FINDINGS = (("Cardiomegaly",), ("Effusion",), (), ("Mass",))  # one study per patient
TINY = ["--network", "DenseNet121", "--init-features", "8", "--growth-rate", "4"]
FAST = ["--epochs", "1", "--batch-size", "2", "--input-size", "64", "--no-progress"]


@dataclass(frozen=True, kw_only=True)
class Analysed:
    settings: Settings
    node: Node
    images: list[tuple[str, str]]  # (study, SOP Instance UID), one per patient
    calls: dict[str, dict[str, bool]]  # SOP Instance UID -> label -> the model's call


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Analysed]:
    """A node with the demo model that analysed four studies of four patients."""
    root = tmp_path_factory.mktemp("node")
    settings = node_settings(root)
    datasets = [
        phantom_dataset(
            make_phantom(np.random.default_rng(n), findings=findings, size=(256, 256)),
            patient_id=f"P{n}",
            patient_name=f"Patient^{n}",
            study_uid=str(generate_uid()),
        )
        for n, findings in enumerate(FINDINGS)
    ]
    paths = write_study(root / "studies", datasets)
    with Node(settings) as node:
        assert storescu(paths, port=node.port).returncode == 0
        jobs = [wait_finished(node.sessions, str(ds.StudyInstanceUID)) for ds in datasets]
        assert {job.state for job in jobs} == {"done"}
        with node.sessions() as session:
            calls: dict[str, dict[str, bool]] = {}
            for r in session.scalars(select(Result)).all():
                calls.setdefault(r.sop_instance_uid, {})[r.label] = r.present
        images = [(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)) for ds in datasets]
        yield Analysed(settings=settings, node=node, images=images, calls=calls)


def _judge(analysed: Analysed, image: int, label: str, verdict: str, user: str = "vic") -> int:
    study, sop = analysed.images[image]
    with analysed.node.sessions.begin() as session:
        return record_feedback(
            session,
            study_instance_uid=study,
            sop_instance_uid=sop,
            label=label,
            verdict=verdict,
            user_name=user,
            labels=load_bundle(DEMO_BUNDLE).labels,
        )


def _config(analysed: Analysed, folder: Path) -> Path:
    """The node's settings as an operator's TOML file."""
    settings = analysed.settings
    path = folder / "node.toml"
    path.write_text(
        f'database_url = "{settings.database_url}"\nspool_dir = "{settings.spool_dir}"\n'
        f'model_bundle = "{settings.model_bundle}"\ndevice = "cpu"\n'
    )
    return path


def _rows(folder: Path) -> dict[str, set[str]]:
    """labels.csv as SOP Instance UID -> findings; every file it names is the image."""
    with (folder / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert dcmread(folder / row["file"]).SOPInstanceUID == row["sop_instance_uid"]
    return {row["sop_instance_uid"]: set(row["labels"].split("|")) - {"No Finding"} for row in rows}


def test_verdicts_correct_calls() -> None:
    """disagree flips a call, missed makes it present, agree keeps it."""
    assert [corrected(call, "agree") for call in (True, False)] == [True, False]
    assert [corrected(call, "disagree") for call in (True, False)] == [False, True]
    assert [corrected(call, "missed") for call in (True, False)] == [True, True]


def test_verdicts_exported_train_and_evaluate(
    analysed: Analysed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verdicts on three of the four images are exported (all four with --all) with the
    corrected labels, charted by finding and day (the newest verdict counting), and `dicom-node
    train` and `dicom-node evaluate` read the export."""
    for key in [k for k in os.environ if k.startswith("DICOM_NODE_")]:
        monkeypatch.delenv(key)
    with pytest.raises(FeedbackError, match="not a finding"):
        _judge(analysed, 0, "Fracture", "missed")
    with pytest.raises(FeedbackError, match="verdict"):
        _judge(analysed, 0, "Mass", "maybe")
    _judge(analysed, 0, "Cardiomegaly", "disagree")
    _judge(analysed, 1, "Mass", "missed")
    _judge(analysed, 2, "Effusion", "disagree", user="ann")
    _judge(analysed, 2, "Effusion", "agree")  # the newest verdict wins
    sops = [sop for _, sop in analysed.images]
    calls = {sop: {label for label, c in analysed.calls[sop].items() if c} for sop in sops}
    expected = {
        sops[0]: calls[sops[0]] ^ {"Cardiomegaly"},
        sops[1]: calls[sops[1]] | {"Mass"},
        sops[2]: calls[sops[2]],
    }
    today = dt.datetime.now(dt.UTC).date()
    chart = {(r.label, r.day): (r.agreed, r.disagreed) for r in agreement(analysed.node.sessions)}
    assert chart == {
        ("Cardiomegaly", today): (0, 1),
        ("Effusion", today): (1, 0),
        ("Mass", today): (0, 1),
    }
    assert agreement(analysed.node.sessions, since=today + dt.timedelta(days=1)) == []
    config = _config(analysed, tmp_path)
    reviewed, everything = tmp_path / "reviewed", tmp_path / "all"
    assert main(["feedback", "export", "--out", str(reviewed), "--config", str(config)]) == 0
    assert _rows(reviewed) == expected
    argv = ["feedback", "export", "--out", str(everything), "--all", "--config", str(config)]
    assert main(argv) == 0
    assert _rows(everything) == expected | {sops[3]: calls[sops[3]]}
    assert main(argv) == 1  # the folder is not empty any more: nothing overwritten
    bundle = tmp_path / "bundle"
    train = ["train", "--data", str(everything), "--out", str(bundle), "--mlflow", "off"]
    assert main([*train, "--val-fraction", "0.25", *TINY, *FAST]) == 0
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "DICOM folder all" in metadata["dicom_node"]["training_data"]
    scores = tmp_path / "scores"
    assert main(["evaluate", str(bundle), str(reviewed), "--out", str(scores)]) == 0
    assert (scores / "evaluation.json").is_file()


def test_an_export_needs_a_new_folder(analysed: Analysed, tmp_path: Path) -> None:
    """A folder that holds anything is refused, and nothing is written into it."""
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FeedbackError, match="not an empty folder"):
        export_labels(analysed.node.sessions, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]

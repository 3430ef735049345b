"""`dicom-node train` on both data layouts and on phantoms: plumbing, the written bundle, and the
node reading that bundle exactly as the training code's model."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dicom_node.cli import model_commands, models
from dicom_node.model.bundle import METADATA, load_bundle
from dicom_node.model.infer import Classifier
from dicom_node.model.preprocess import InputSpec
from dicom_node.synthetic.samples import phantom_data
from dicom_node.training.fit import FitConfig, FocalLoss, positive_weights, progress
from dicom_node.training.samples import Shifted
from dicom_node.training.trainer import TrainConfig, train
from structured_reports.codes import FINDING_CODES
from tests.fake_data import write_chestxray14, write_dicom_folder

TINY = ["--network", "DenseNet121", "--init-features", "8", "--growth-rate", "4"]
FAST = ["--epochs", "1", "--batch-size", "4", "--input-size", "64", "--no-progress"]
LABELS = ("Cardiomegaly", "Effusion", "Mass")


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    models.configure_train(parser)
    return models.run_train(parser.parse_args(list(argv)))


def _check_bundle(out: Path, *, synthetic: bool, data_words: str) -> None:
    bundle = load_bundle(out)
    section = json.loads((out / METADATA).read_text())["dicom_node"]
    assert bundle.labels == tuple(section["labels"]) and bundle.input_size == 64
    for label, code in section["codes"].items():
        concept = FINDING_CODES[label]
        assert code == {
            "value": concept.value,
            "scheme": concept.scheme,
            "meaning": concept.meaning,
        }
    assert all(0 < t < 1 for t in bundle.thresholds)
    assert bundle.identity.synthetic_demo is synthetic
    assert data_words in section["training_data"]
    assert section["training"]["best_epoch"] == 1 and "validation_metrics" in section
    assert "NOT FOR CLINICAL USE" in (out / "LICENSE").read_text()


def test_train_on_chestxray14_layout(tmp_path: Path) -> None:
    """One epoch on a fake ChestX-ray14 folder (PNGs, Data_Entry_2017.csv, official lists)
    writes a complete bundle that the node loads, with codes and per-label thresholds."""
    write_chestxray14(tmp_path / "cxr", patients=8, per_patient=2, size=80)
    out = tmp_path / "bundle"
    assert (
        _run("--data", str(tmp_path / "cxr"), "--out", str(out), "--mlflow", "off", *TINY, *FAST)
        == 0
    )
    _check_bundle(out, synthetic=False, data_words="ChestX-ray14")
    assert load_bundle(out).identity.name == "cxr-densenet121"  # named after its data


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["--synthetic"], "phantoms-densenet121"),
        (["--data", "/data/ChestX-ray14"], "chestx-ray14-densenet121"),
        (["--data", "/data/site_A", "--network", "DenseNet169"], "site-a-densenet169"),
        (["--synthetic", "--name", "cxr14-densenet121-demo"], "cxr14-densenet121-demo"),
    ],
)
def test_bundle_is_named_after_its_data_unless_named(argv: list[str], name: str) -> None:
    """Without --name a bundle is named after its data and network, never after the demo."""
    parser = argparse.ArgumentParser()
    models.configure_train(parser)
    args = parser.parse_args(["--out", "b", *argv])
    assert model_commands.bundle_name(args) == name


def test_train_on_dicom_folder_with_focal_loss(tmp_path: Path) -> None:
    """One epoch on a DICOM folder with labels.csv, focal loss and a label subset."""
    write_dicom_folder(tmp_path / "dcm", patients=6, per_patient=2, size=80)
    out = tmp_path / "bundle"
    args = ["--data", str(tmp_path / "dcm"), "--out", str(out), "--loss", "focal"]
    assert _run(*args, "--labels", ",".join(LABELS), "--mlflow", "off", *TINY, *FAST) == 0
    _check_bundle(out, synthetic=False, data_words="DICOM folder")
    assert load_bundle(out).labels == LABELS


def test_train_refuses_bad_data_with_a_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder in neither layout ends with exit status 2 and says why."""
    assert _run("--data", str(tmp_path), "--out", str(tmp_path / "b"), *FAST) == 2
    assert "neither" in caplog.text


def test_phantom_training_images_move_and_validation_images_do_not() -> None:
    """Phantom training data moves by up to a sixth of the input side (whole pixels, fresh each
    read) and says so; validation data and `--synthetic --no-augment` do not move."""
    spec = InputSpec(size=48, mean=0.5, std=0.25)
    data = phantom_data(seed=1, n_train=4, n_val=2, spec=spec, labels=LABELS, phantom_size=64)
    assert isinstance(data.train, Shifted) and data.train.max_pixels == 8
    assert data.params["shift_pixels"] == 8 and "shifted by up to 8 px" in data.description
    assert isinstance(data.val, TensorDataset)
    torch.manual_seed(0)
    assert not torch.equal(data.train[0][0], data.train[0][0])
    parser = argparse.ArgumentParser()
    models.configure_train(parser)
    phantoms = ["--n-train", "4", "--n-val", "2", "--phantom-size", "64"]
    args = parser.parse_args(["--out", "x", "--synthetic", "--no-augment", *FAST, *phantoms])
    still = model_commands.data_from(args, model_commands.config_from(args))
    assert isinstance(still.train, TensorDataset) and still.params["shift_pixels"] == 0


def test_bundle_gives_the_training_models_probabilities(tmp_path: Path) -> None:
    """load_bundle + Classifier reproduce the training code's model on the validation images,
    and the validation probabilities recorded during training."""
    spec = InputSpec(size=64, mean=0.5, std=0.25)
    data = phantom_data(seed=5, n_train=24, n_val=12, spec=spec, labels=LABELS, phantom_size=64)
    config = TrainConfig(
        name="tiny-phantoms",
        version="0.0.1",
        labels=LABELS,
        spec=spec,
        fit=FitConfig(epochs=1, batch_size=8, lr=1e-3, seed=5, progress=False),
        network_kwargs={"init_features": 8, "growth_rate": 4},
        mlflow="off",
    )
    outcome = train(tmp_path / "bundle", data, config)
    x = torch.stack([data.val[i][0] for i in range(12)])
    with torch.no_grad():
        expected = torch.sigmoid(outcome.model(x)).numpy()
    node = Classifier(load_bundle(tmp_path / "bundle"), torch.device("cpu")).predict(x)
    assert np.abs(node - expected).max() < 1e-5
    assert np.abs(node - outcome.result.val_probs).max() < 1e-5
    assert load_bundle(tmp_path / "bundle").identity.synthetic_demo is True


def test_focal_loss_and_positive_weights() -> None:
    """Focal loss with gamma 0 is weighted BCE; gamma > 0 down-weights easy examples;
    positive weights are negatives / positives, capped."""
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    weights = positive_weights(targets, cap=2.0)
    assert weights.tolist() == [2.0, 2.0]
    logits = torch.tensor([[2.0, -1.0], [0.5, -3.0], [-2.0, 0.2], [0.1, 3.0]])
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=weights)(logits, targets)
    assert torch.allclose(FocalLoss(weights, gamma=0.0)(logits, targets), bce)
    assert FocalLoss(weights, gamma=2.0)(logits, targets) < bce


def test_progress_logs_without_tqdm(caplog: pytest.LogCaptureFixture) -> None:
    """Without tqdm, progress goes to log lines; with it, the items pass through unchanged."""
    caplog.set_level(logging.INFO)
    assert list(progress(range(20), total=20, desc="epoch 1/1")) == list(range(20))
    if importlib.util.find_spec("tqdm") is None:
        assert "epoch 1/1: 20/20 batches" in caplog.text


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")  # MLflow's and SQLAlchemy's own notes
def test_mlflow_records_parameters_metrics_and_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With MLflow installed, a run logs parameters, per-epoch metrics and the bundle."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # artifacts go to ./mlruns or ./mlartifacts
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_dicom_folder(tmp_path / "dcm", patients=4, per_patient=2, size=80)
    args = ["--data", str(tmp_path / "dcm"), "--out", str(tmp_path / "b"), "--mlflow", "on"]
    assert _run(*args, "--experiment", "test", *TINY, *FAST) == 0
    run = mlflow.search_runs(experiment_names=["test"], output_format="list")[0]
    assert run.data.params["loss"] == "weighted-bce" and "val_mean_auroc" in run.data.metrics
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "bundle")]
    assert "bundle/configs" in artifacts and "bundle/models" in artifacts


def test_mlflow_on_without_mlflow_is_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--mlflow on where MLflow cannot be imported stops with status 2 and the install hint."""
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    write_dicom_folder(tmp_path / "dcm", patients=2, per_patient=1, size=64)
    args = ["--data", str(tmp_path / "dcm"), "--out", str(tmp_path / "b"), "--mlflow", "on"]
    assert _run(*args, *TINY, *FAST) == 2
    assert "dicom-node[mlflow]" in caplog.text
    assert not (tmp_path / "b").exists()

"""Experiment tracking with MLflow when it is installed (optional extra `mlflow`), else nothing."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

Mode = Literal["auto", "on", "off"]


class Tracker(Protocol):
    """Where a training run records its parameters, per-epoch metrics and the bundle."""

    def params(self, params: Mapping[str, Any]) -> None: ...
    def metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def artifacts(self, folder: Path, name: str) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Records nothing (MLflow absent or tracking switched off)."""

    def params(self, params: Mapping[str, Any]) -> None:
        pass

    def metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def artifacts(self, folder: Path, name: str) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker:
    """One MLflow run (tracking URI from MLFLOW_TRACKING_URI or MLflow's default ./mlruns)."""

    def __init__(self, mlflow: Any, experiment: str, run_name: str) -> None:
        self.mlflow = mlflow
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_name)
        log.info("MLflow run %s in experiment %r", self.run.info.run_id, experiment)

    def params(self, params: Mapping[str, Any]) -> None:
        self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def metrics(self, metrics: Mapping[str, float], step: int) -> None:
        finite = {k: float(v) for k, v in metrics.items() if not math.isnan(v)}
        self.mlflow.log_metrics(finite, step=step)

    def artifacts(self, folder: Path, name: str) -> None:
        self.mlflow.log_artifacts(str(folder), artifact_path=name)

    def close(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)


def mlflow_available() -> bool:
    try:
        return importlib.util.find_spec("mlflow") is not None
    except ValueError:  # an entry without a spec in sys.modules (None: import blocked)
        return False


def open_tracker(mode: Mode, *, experiment: str, run_name: str) -> Tracker:
    """MLflow for 'on' (an error when absent) and for 'auto' when installed; else NullTracker."""
    if mode == "off" or (mode == "auto" and not mlflow_available()):
        return NullTracker()
    try:
        mlflow = importlib.import_module("mlflow")
    except ImportError as exc:
        raise RuntimeError(
            "--mlflow on: install the extra: pip install 'dicom-node[mlflow]'"
        ) from exc
    return MlflowTracker(mlflow, experiment, run_name)

"""Shared fixtures: a tiny generated dataset and a teacher checkpoint trained on it, built once per session."""

from __future__ import annotations

import os

os.environ["YOLO_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

# Ultralytics binds its log handler to sys.stdout when first imported. yolo_kd imports it lazily, so without this the
# first import could happen inside a test using capsys, whose stream is closed after that test; every later log line
# would then print a logging error on stderr and break the one-line-error checks.
import ultralytics  # noqa: E402, F401

IMGSZ = 64


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for ``-n auto`` (pyproject's addopts): one per core, at most 4.

    Ultralytics trains on one thread per process on 2 cores (``NUM_THREADS``), so two workers there halve the suite's
    time (README, "Tests"). Each worker builds the session fixtures (a teacher, a KD run) itself, hence the cap: a
    many-core machine does not train them dozens of times over.
    """
    return max(1, min(4, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def data_yaml(tmp_path_factory: pytest.TempPathFactory) -> str:
    from yolo_kd.dataset import make_dataset

    root = tmp_path_factory.mktemp("data")
    return str(make_dataset(root, "tiny", n_train=16, n_val=8, imgsz=IMGSZ, seed=0))


def _train(model: str, data: str, project: Path, name: str, epochs: int = 1) -> str:
    from ultralytics import YOLO

    YOLO(model).train(
        data=data,
        epochs=epochs,
        imgsz=IMGSZ,
        batch=8,
        workers=0,
        plots=False,
        project=str(project),
        name=name,
        exist_ok=True,
        verbose=False,
        val=False,
    )
    return str(project / name / "weights" / "last.pt")


def tiny_trainer(data: str, teacher: str, project: Path, name: str, **overrides: Any) -> Any:
    """A ``KDDetectionTrainer`` for a yolov8n student at the tests' image size: 1 epoch, batch 8, unless overridden."""
    from yolo_kd import KDDetectionTrainer

    args = dict(
        model="yolov8n.yaml", data=data, teacher=teacher, epochs=1, imgsz=IMGSZ, batch=8, workers=0, plots=False
    )
    return KDDetectionTrainer(overrides={**args, "project": str(project), "name": name, **overrides})


@pytest.fixture(scope="session")
def teacher_pt(data_yaml: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A yolov8s teacher (wider than the n student, so connectors really project channels)."""
    return _train("yolov8s.yaml", data_yaml, tmp_path_factory.mktemp("teacher"), "t")


@pytest.fixture(scope="session")
def kd_run(data_yaml: str, teacher_pt: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-epoch run through the CLI, shared by the checks that only read its outputs."""
    from yolo_kd.cli import main

    project = tmp_path_factory.mktemp("kdrun")
    rc = main(
        [
            "train",
            "model=yolov8n.yaml",
            f"teacher={teacher_pt}",
            f"data={data_yaml}",
            "kd=full",  # every term, so every column and the connectors are exercised
            "kd_cross=1.0",  # and cross-head KD, which no preset switches on
            "kd_final=1.0",  # constant gains: the presets fade them to 0 by the last epoch, whose columns would be 0
            "kd_lead=0",  # nor tied to the lead of this 1-epoch teacher, which has none (its score is 0)
            "epochs=2",
            f"imgsz={IMGSZ}",
            "batch=8",
            "workers=0",
            "plots=False",
            f"project={project}",
            "name=run",
        ]
    )
    assert rc == 0
    return project / "run"


@pytest.fixture
def assigner_shares(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The teacher's share in label assignment that each call of the teacher-guided assigner saw, in order."""
    from yolo_kd.assign import TeacherGuidedAssigner

    shares: list[float] = []
    call = TeacherGuidedAssigner.__call__

    def recorded(self: TeacherGuidedAssigner, *args: Any, **kwargs: Any) -> tuple:
        shares.append(float(self.share))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(TeacherGuidedAssigner, "__call__", recorded)
    return shares

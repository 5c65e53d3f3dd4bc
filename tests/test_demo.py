"""The README's main job, shrunk: yolo-kd demo end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from yolo_kd.cli import main


def test_demo_writes_report_plot_and_export(tmp_path: Path) -> None:
    if importlib.util.find_spec("onnx") is None:
        pytest.skip("the export extra is not installed (pip install -e .[export]); CI installs it")
    project, data_root = tmp_path / "demo", tmp_path / "datasets"
    argv = [
        "demo",
        "epochs=1",
        "teacher_epochs=1",
        "imgsz=64",
        "n_train=16",
        "n_val=8",
        "batch=8",
        f"project={project}",
        f"data_root={data_root}",
    ]
    assert main(argv) == 0
    report = (project / "report.md").read_text()
    for row in ("| teacher |", "| baseline |", "| distilled |"):
        assert row in report
    assert "distilled student started from the teacher's weights" in report  # yolov8s -> yolov8n: same layers
    assert (project / "report.png").stat().st_size > 10_000
    assert (project / "distilled" / "weights" / "best.onnx").stat().st_size > 1_000_000
    # second run reuses the cached teacher instead of training it again
    teacher = next(project.glob("teacher_*/weights/best.pt"))
    mtime = teacher.stat().st_mtime
    assert main(argv) == 0
    assert teacher.stat().st_mtime == mtime

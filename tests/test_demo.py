"""The README's main job, shrunk: yolo-kd demo end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from yolo_kd.cli import main

from .conftest import IMGSZ

pytestmark = pytest.mark.slow  # end-to-end: a KD run, export or demo


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
    # a second run over the first one's results is refused unless asked for ...
    assert main(argv) == 2
    # ... and then reuses the cached teacher (its run finished with these settings) instead of training it again
    teacher = next(project.glob("teacher_*/weights/best.pt"))
    mtime = teacher.stat().st_mtime
    assert main([*argv, "overwrite=True"]) == 0
    assert teacher.stat().st_mtime == mtime


def _cached(project: Path, checkpoint: dict) -> Path:
    """Put ``checkpoint`` where the demo caches its teacher for the settings of ``_settings``."""
    import torch

    best = project / "teacher_yolov8s_e1_64" / "weights" / "best.pt"
    best.parent.mkdir(parents=True)
    torch.save(checkpoint, best)
    return best


def _settings(project: Path, **overrides: object) -> tuple[dict, dict]:
    from yolo_kd.demo import DEFAULTS

    cfg = {**DEFAULTS, "teacher_epochs": 1, "imgsz": IMGSZ, "batch": 8, **overrides}
    common = dict(imgsz=IMGSZ, batch=8, device="cpu", workers=0, plots=False, project=str(project))
    return cfg, common


def test_demo_reuses_a_teacher_only_when_its_run_finished_with_these_settings(
    data_yaml: str, teacher_pt: str, tmp_path: Path
) -> None:
    import torch

    from yolo_kd.demo import demo_teacher, teacher_mismatch

    finished = torch.load(teacher_pt, map_location="cpu", weights_only=False)  # a 1-epoch run that completed
    project = tmp_path / "finished"
    best = _cached(project, finished)
    cfg, common = _settings(project)
    assert demo_teacher(cfg, data_yaml, project, common) == (str(best), "reused")
    want = {"model": "yolov8s.yaml", "epochs": 1, "imgsz": IMGSZ, "data": data_yaml, "seed": 1}
    assert teacher_mismatch(best, want) == "it was trained with seed=0, not 1"

    killed = {**finished, "epoch": 0, "optimizer": {"state": {}}}  # what a run killed after its first epoch leaves
    project = tmp_path / "killed"
    best = _cached(project, killed)
    before = best.read_bytes()
    cfg, common = _settings(project)
    assert "did not finish" in teacher_mismatch(best, {**want, "seed": 0})
    path, how = demo_teacher(cfg, data_yaml, project, common)
    assert how == "trained" and path == str(project / "teacher_yolov8s_e1_64_2" / "weights" / "best.pt")
    assert Path(path).is_file() and best.read_bytes() == before  # the unfinished run is left as it was
    assert demo_teacher(cfg, data_yaml, project, common) == (path, "reused")


def test_demo_refuses_bad_models_before_any_stage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["demo", f"project={tmp_path / 'demo'}", f"data_root={tmp_path / 'data'}"]
    for argv, message in (
        ([*base, f"teacher={tmp_path / 'missing.pt'}"], "no such file"),
        ([*base, "student=yolov8n_missing.pt"], "student=yolov8n_missing.pt: no such file"),
        ([*base, "teacher_model=nope.pt"], "teacher_model=nope.pt: no such file"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
    assert list(tmp_path.iterdir()) == []

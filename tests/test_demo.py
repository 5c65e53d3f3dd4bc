"""The README's main job, shrunk: yolo-kd demo end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from yolo_kd.cli import main
from yolo_kd.demo import slow_cpu_note

from .conftest import IMGSZ

TINY = ["epochs=1", "teacher_epochs=1", "imgsz=64", "n_train=16", "n_val=8", "batch=8"]


@pytest.mark.slow
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
        "regime=scratch",
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
    from yolo_kd.demo import demo_settings

    cfg = demo_settings({"regime": "scratch", "teacher_epochs": 1, "imgsz": IMGSZ, "batch": 8, **overrides})
    common = dict(imgsz=IMGSZ, batch=8, device="cpu", workers=0, plots=False, project=str(project))
    return cfg, common


@pytest.mark.slow
def test_demo_reuses_a_teacher_only_when_its_run_finished_with_these_settings(
    data_yaml: str, teacher_pt: str, tmp_path: Path
) -> None:
    import torch

    from yolo_kd.demo import demo_teacher
    from yolo_kd.runs import why_not_reuse

    finished = torch.load(teacher_pt, map_location="cpu", weights_only=False)  # a 1-epoch run that completed
    project = tmp_path / "finished"
    best = _cached(project, finished)
    cfg, common = _settings(project)
    assert demo_teacher(cfg, data_yaml, project, common) == (str(best), "reused")
    want = {"model": "yolov8s.yaml", "epochs": 1, "imgsz": IMGSZ, "data": data_yaml, "seed": 1}
    assert why_not_reuse(best.parent.parent, want) == "it was trained with seed=0, not 1"

    killed = {**finished, "epoch": 0, "optimizer": {"state": {}}}  # what a run killed after its first epoch leaves
    project = tmp_path / "killed"
    best = _cached(project, killed)
    before = best.read_bytes()
    cfg, common = _settings(project)
    assert "did not finish" in why_not_reuse(best.parent.parent, {**want, "seed": 0})
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


def test_demo_refuses_a_bad_regime_key_or_value_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["demo", f"project={tmp_path / 'demo'}", f"data_root={tmp_path / 'data'}"]
    for argv, message in (
        ([*base, "regime=bogus"], "regime=bogus is unknown; choose one of ['finetune', 'scratch']"),
        ([*base, "regime=scratch", "source_epochs=3"], "(source_epochs: regime=finetune only)"),  # no source stage
        ([*base, "regime=finetune", "sauce_epochs=3"], "unknown demo key(s) ['sauce_epochs'] for regime=finetune"),
        ([*base, "regime=finetune", "teacher_source_epochs=0"], "teacher_source_epochs=0: give a whole number"),
        ([*base, "epochs=1.5"], "epochs=1.5: give a whole number of at least 1"),
        ([*base, "imgsz=16"], "imgsz=16: give a whole number of at least 32"),
        ([*base, "kd=nope"], "kd=nope"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_finetune_regime_starts_both_students_from_the_source_pretrained_student(tmp_path: Path) -> None:
    import yaml

    project = tmp_path / "demo"
    argv = ["demo", "regime=finetune", *TINY, "source_epochs=1", "teacher_source_epochs=1", "source_n_train=16"]
    argv += [f"project={project}", f"data_root={tmp_path / 'datasets'}"]
    assert main(argv) == 0
    (pretrained,) = project.glob("source_yolov8n_*/weights/best.pt")  # the student, pretrained on the source domain
    assert len(list(project.glob("source_yolov8m_*/weights/best.pt"))) == 1  # the deeper teacher's pretraining ...
    (teacher,) = project.glob("teacher_yolov8m_*/weights/best.pt")  # ... and its fine-tuning on the target
    for student in ("baseline", "distilled"):
        args = yaml.safe_load((project / student / "args.yaml").read_text())
        assert Path(args["model"]).resolve() == pretrained.resolve()  # started from the pretrained checkpoint
    report = (project / "report.md").read_text()
    assert "Regime: finetune." in report and f"teacher `{teacher}`" in report
    assert f"Both students (baseline and distilled) started from the source-pretrained weights `{pretrained}`" in report
    assert "yolov8m.yaml, was pretrained 1 epochs on the source domain, then fine-tuned 1 epochs" in report
    assert "source-pretrained student trained; teacher trained." in report

    # a second run reuses every cached stage (their runs finished with these settings): nothing is trained again
    cached = sorted(project.glob("*_yolov8*"))
    mtimes = {p: p.stat().st_mtime for p in project.glob("*_yolov8*/weights/best.pt")}
    assert main([*argv, "overwrite=True"]) == 0
    assert sorted(project.glob("*_yolov8*")) == cached
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes
    assert "source-pretrained student reused; teacher reused." in (project / "report.md").read_text()


def test_the_demo_warns_only_on_a_cpu_without_avx512(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert "AVX2" in slow_cpu_note("cpu") and "AVX2" in slow_cpu_note(None)
    assert slow_cpu_note("0") is None  # a GPU
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert slow_cpu_note("cpu") is None and slow_cpu_note(None) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert slow_cpu_note(None) is None  # Ultralytics picks the GPU

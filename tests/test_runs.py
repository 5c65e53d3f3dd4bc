"""Train once, reuse after: which cached runs may be reused (fast: hand-made checkpoints, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from yolo_kd.runs import content_key, resumable, train_or_reuse, why_not_reuse

ARGS = {"model": "yolov8n.yaml", "data": "data.yaml", "epochs": 2, "imgsz": 64, "batch": 8, "seed": 0}


def _run(folder: Path, finished: bool = True, **train_args: object) -> Path:
    """A run folder whose best.pt is what Ultralytics leaves after a finished run, or after a kill in epoch 1."""
    import torch

    best = folder / "weights" / "best.pt"
    best.parent.mkdir(parents=True)
    ckpt = {"model": torch.nn.Linear(2, 2), "train_args": {**ARGS, **train_args}}
    ckpt.update({"epoch": -1, "optimizer": None} if finished else {"epoch": 0, "optimizer": {"state": {}}})
    torch.save(ckpt, best)
    return best


def test_only_a_finished_run_with_the_same_settings_is_reused(tmp_path: Path) -> None:
    assert why_not_reuse(_run(tmp_path / "done").parent.parent, ARGS) is None
    assert why_not_reuse(tmp_path / "done", {**ARGS, "data": str(Path("data.yaml").resolve())}) is None  # same file
    assert why_not_reuse(tmp_path / "done", {**ARGS, "seed": 1}) == "it was trained with seed=0, not 1"
    assert why_not_reuse(tmp_path / "done", {**ARGS, "epochs": 3}) == "it was trained with epochs=2, not 3"
    _run(tmp_path / "killed", finished=False)
    assert why_not_reuse(tmp_path / "killed", ARGS) == "its run did not finish (stopped after epoch 1 of 2)"
    (tmp_path / "empty").mkdir()
    assert "no weights/best.pt" in why_not_reuse(tmp_path / "empty", ARGS)
    (tmp_path / "junk" / "weights").mkdir(parents=True)
    (tmp_path / "junk" / "weights" / "best.pt").write_bytes(b"not a checkpoint")
    assert "not an Ultralytics checkpoint" in why_not_reuse(tmp_path / "junk", ARGS)


def test_train_or_reuse_returns_the_first_reusable_folder_and_leaves_the_others(tmp_path: Path) -> None:
    killed = _run(tmp_path / "stage", finished=False)
    before = killed.read_bytes()
    done = _run(tmp_path / "stage_2")
    model = ARGS["model"]
    settings = {**{k: v for k, v in ARGS.items() if k != "model"}, "project": str(tmp_path)}
    assert train_or_reuse(model, "stage", "stage", **settings) == (str(done), "reused")
    assert killed.read_bytes() == before
    with pytest.raises(KeyError):  # every checked setting must be given: none is taken from Ultralytics' defaults
        train_or_reuse(model, "stage", "stage", project=str(tmp_path), data="data.yaml", epochs=2)


def test_only_a_killed_run_with_the_same_settings_is_resumable(tmp_path: Path) -> None:
    import shutil

    for folder, finished in (("killed", False), ("done", True)):
        best = _run(tmp_path / folder, finished=finished)
        shutil.copy(best, best.with_name("last.pt"))  # a kill leaves last.pt of the same epoch
    assert resumable(tmp_path / "killed", ARGS) == tmp_path / "killed" / "weights" / "last.pt"
    assert resumable(tmp_path / "killed", {**ARGS, "epochs": 3}) is None  # another schedule: not the same run
    assert resumable(tmp_path / "done", ARGS) is None  # finished: reuse, not resume
    assert resumable(tmp_path / "nothing", ARGS) is None
    # killed in its final evaluation: no epoch left, which Ultralytics refuses to resume
    last = _run(tmp_path / "final", finished=False, epochs=1).with_name("last.pt")
    shutil.copy(last.with_name("best.pt"), last)
    assert resumable(tmp_path / "final", {**ARGS, "epochs": 1}) is None


@pytest.mark.slow
def test_a_killed_stage_is_resumed_to_the_end(tmp_path: Path) -> None:
    """A run stopped after its first epoch continues from last.pt and finishes; without resume it is left alone."""
    from ultralytics import YOLO

    from yolo_kd.dataset import make_dataset

    data = str(make_dataset(tmp_path, "tiny", n_train=8, n_val=4, imgsz=32, seed=0))
    settings = dict(project=str(tmp_path / "runs"), data=data, epochs=2, imgsz=32, batch=4, seed=0)
    extra = dict(workers=0, plots=False, device="cpu")

    def stop_after_first_epoch(trainer: object) -> None:
        raise KeyboardInterrupt  # what a Ctrl-C or a session's end does after last.pt of epoch 1 was saved

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_fit_epoch_end", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        model.train(name="stage", exist_ok=False, **settings, **extra)
    last = tmp_path / "runs" / "stage" / "weights" / "last.pt"
    killed = last.read_bytes()
    best, how = train_or_reuse("yolov8n.yaml", "stage", "stage", resume=True, **settings, **extra)
    assert (best, how) == (str(tmp_path / "runs" / "stage" / "weights" / "best.pt"), "resumed")
    assert why_not_reuse(tmp_path / "runs" / "stage", {"model": "yolov8n.yaml", **settings}) is None
    assert last.read_bytes() != killed
    assert len((tmp_path / "runs" / "stage" / "results.csv").read_text().splitlines()) == 3  # header + 2 epochs


@pytest.mark.slow
def test_a_relative_project_holds_the_run_it_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ultralytics puts a relative project under its own runs_dir; the stage must land where it is looked for."""
    from yolo_kd.dataset import make_dataset

    data = str(make_dataset(tmp_path, "tiny", n_train=8, n_val=4, imgsz=32, seed=0))
    monkeypatch.chdir(tmp_path)
    settings = dict(project="runs", data=data, epochs=1, imgsz=32, batch=4, seed=0, workers=0, plots=False)
    best, how = train_or_reuse("yolov8n.yaml", "stage", "stage", **settings, device="cpu")
    assert (Path(best), how) == (tmp_path / "runs" / "stage" / "weights" / "best.pt", "trained")
    assert train_or_reuse("yolov8n.yaml", "stage", "stage", **settings, device="cpu") == (best, "reused")


def test_content_key_changes_with_settings_and_parent_bytes(tmp_path: Path) -> None:
    parent = tmp_path / "parent.pt"
    parent.write_bytes(b"one")
    key = content_key(str(parent), 2, 64)
    assert key == content_key(str(parent), 2, 64) and len(key) == 10
    assert key != content_key(str(parent), 3, 64)
    parent.write_bytes(b"two")  # the same path retrained: another key
    assert key != content_key(str(parent), 2, 64)

"""Train once, reuse after: which cached runs may be reused (fast: hand-made checkpoints, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from yolo_kd.runs import content_key, train_or_reuse, why_not_reuse

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


def test_content_key_changes_with_settings_and_parent_bytes(tmp_path: Path) -> None:
    parent = tmp_path / "parent.pt"
    parent.write_bytes(b"one")
    key = content_key(str(parent), 2, 64)
    assert key == content_key(str(parent), 2, 64) and len(key) == 10
    assert key != content_key(str(parent), 3, 64)
    parent.write_bytes(b"two")  # the same path retrained: another key
    assert key != content_key(str(parent), 2, 64)

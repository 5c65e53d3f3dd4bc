"""The Ultralytics patches in compat.py last for their block only, errors included."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from yolo_kd.compat import args_without, checkpoints_written_to, criterion_detached, torchrun_world_size


def test_criterion_is_off_the_student_inside_the_block_only() -> None:
    from copy import deepcopy

    student, criterion = torch.nn.Linear(1, 1), object()
    student.criterion = criterion
    with criterion_detached(student):
        assert student.criterion is None
        assert deepcopy(student).criterion is None  # what Ultralytics' NaN recovery copies into its EMA
    assert student.criterion is criterion
    with pytest.raises(RuntimeError), criterion_detached(student):
        raise RuntimeError("recovery failed")
    assert student.criterion is criterion


def test_kd_keys_hidden_from_args_inside_the_block_only() -> None:
    args = SimpleNamespace(epochs=3, teacher="t.pt", kd_cls=1.0)
    with args_without(args, ("teacher", "kd_cls", "kd_box")):
        assert vars(args) == {"epochs": 3}
    assert vars(args) == {"epochs": 3, "teacher": "t.pt", "kd_cls": 1.0}


def test_checkpoint_paths_redirected_inside_the_block_only(tmp_path) -> None:
    trainer = SimpleNamespace(last=tmp_path / "last.pt", best=tmp_path / "best.pt")
    with checkpoints_written_to(trainer, tmp_path / "a.pt", tmp_path / "b.pt"):
        assert (trainer.last.name, trainer.best.name) == ("a.pt", "b.pt")
    assert (trainer.last.name, trainer.best.name) == ("last.pt", "best.pt")


def test_world_size_is_ultralytics_own_outside_torchrun() -> None:
    assert torchrun_world_size(1) == 1 and torchrun_world_size(0) == 0

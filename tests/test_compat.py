"""The Ultralytics patches in compat.py last for their block only, errors included."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from yolo_kd.compat import (
    add_callbacks_once,
    args_without,
    checkpoints_written_to,
    criterion_detached,
    torchrun_world_size,
)


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
    trainer = SimpleNamespace(last=tmp_path / "last.pt", best=tmp_path / "best.pt", save_period=1)
    with checkpoints_written_to(trainer, tmp_path / "a.pt", tmp_path / "b.pt"):
        assert (trainer.last.name, trainer.best.name) == ("a.pt", "b.pt")
        assert trainer.save_period < 1  # Ultralytics writes no epoch{N}.pt in place; the caller writes it whole
    assert (trainer.last.name, trainer.best.name, trainer.save_period) == ("last.pt", "best.pt", 1)


def test_callbacks_added_once_even_when_the_trainer_already_holds_them() -> None:
    from ultralytics.utils.callbacks import get_default_callbacks

    calls: list[str] = []
    trainer = SimpleNamespace(callbacks=get_default_callbacks())
    trainer.add_callback = lambda event, callback: trainer.callbacks[event].append(callback)
    start = lambda _: calls.append("start")  # noqa: E731
    add_callbacks_once(trainer, {"on_train_epoch_start": start})
    add_callbacks_once(trainer, {"on_train_epoch_start": start})  # a DDP worker's trainer, built with the parent's
    for callback in trainer.callbacks["on_train_epoch_start"]:
        callback(trainer)
    assert calls == ["start"]


def test_world_size_is_ultralytics_own_outside_torchrun() -> None:
    assert torchrun_world_size(1) == 1 and torchrun_world_size(0) == 0


def test_final_strip_replaces_whole_files_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ultralytics' end-of-training rewrite of a checkpoint, killed mid-write, leaves the old file whole."""
    import ultralytics.engine.trainer as engine
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    from yolo_kd.compat import atomic_final_strip

    last = tmp_path / "last.pt"
    torch.save({"model": DetectionModel("yolov8n.yaml", nc=2, verbose=False), "epoch": 1, "train_args": {}}, last)
    before = last.read_bytes()
    real_save = torch.save

    def dies_mid_write(obj: object, f: object, *args: object, **kwargs: object) -> None:
        Path(f).write_bytes(b"\x80half")  # what a kill leaves of a write in progress
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt), atomic_final_strip():
        engine.strip_optimizer(last)
    assert last.read_bytes() == before  # the checkpoint is untouched
    monkeypatch.setattr(torch, "save", real_save)
    with atomic_final_strip():
        engine.strip_optimizer(last)
    assert load_checkpoint(last)[0] is not None and engine.strip_optimizer.__name__ == "strip_optimizer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no scratch file left


@pytest.mark.parametrize("tail", ["float", "int16"])
def test_litert_box_tail_adds_rules_to_ultralytics_recipe_only_inside_the_block(tail: str) -> None:
    pytest.importorskip("ai_edge_quantizer")
    from ai_edge_quantizer import recipe

    from yolo_kd.compat import LITERT_BOX_TAIL, litert_int8_box_tail

    original = recipe.static_wi8_ai8
    with pytest.raises(RuntimeError), litert_int8_box_tail(tail):
        rules = recipe.static_wi8_ai8()
        raise RuntimeError("the export failed")
    assert recipe.static_wi8_ai8 is original  # put back, also after a failure
    assert rules[: len(original())] == original()  # Ultralytics' INT8 recipe first, unchanged
    added = rules[len(original()) :]
    assert [r["regex"] for r in added] == [LITERT_BOX_TAIL] * 2
    assert [r["operation"] for r in added] == ["*", "OUTPUT"]
    bits = added[0]["op_config"].get("activation_tensor_config")
    assert (bits or {}).get("num_bits") == (16 if tail == "int16" else None)
    assert added[1]["algorithm_key"] == "no_quantize"  # the graph's output stays float, as Ultralytics wants
    with litert_int8_box_tail("int8"):
        assert recipe.static_wi8_ai8 is original  # int8: Ultralytics' recipe as it is

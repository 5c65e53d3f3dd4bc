"""Checkpoint files: the one loader, the KD record, connector state, atomic writes and the results.csv trim."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ultralytics.utils import IterableSimpleNamespace

from yolo_kd.checkpoint import (
    atomic_save,
    complete_checkpoints,
    connector_state,
    drop_connector_state,
    kd_record,
    load_checkpoint_file,
    load_connector_state,
    periodic_copy,
    read_kd_record,
    restore_connectors,
    resume_record,
    scratch_paths,
    trim_results_csv,
)
from yolo_kd.config import KDConfig, KDConfigError, load_kd_config
from yolo_kd.distiller import Distiller


class Foreign:
    """A class outside Ultralytics' safe-load allow-list."""


def test_loader_honours_ultralytics_safe_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pt"
    torch.save({"train_args": {}, "extra": Foreign()}, path)
    assert isinstance(load_checkpoint_file(path)["extra"], Foreign)  # default: Ultralytics' full unpickling
    from ultralytics.nn import tasks

    if not tasks._SafeLoad.SUPPORTED:
        pytest.skip("this torch has no weights_only allow-list")
    monkeypatch.setattr(tasks, "SAFE_LOAD", True)  # what ULTRALYTICS_SAFE_LOAD=1 sets
    with pytest.raises(TypeError, match="outside the supported"):
        load_checkpoint_file(path)


def test_record_round_trip_and_finished_runs_lose_the_state(tmp_path: Path) -> None:
    cfg = load_kd_config("full")
    distiller = Distiller([4, 8], [8, 16], cfg)
    record = kd_record(cfg, "/t.pt", "abc", connector_state(distiller))
    path = tmp_path / "last.pt"
    atomic_save({"train_args": {"epochs": 3}, "kd": record}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "no temporary file left"
    read = read_kd_record(path)
    assert read["config"] == cfg.to_dict() and read["teacher"] == "/t.pt" and read["teacher_sha256"] == "abc"
    other = Distiller([4, 8], [8, 16], cfg)
    load_connector_state(other, read["state"])
    assert distiller.state_dict() and all(
        torch.equal(v, other.state_dict()[k]) for k, v in distiller.state_dict().items()
    )
    drop_connector_state(path)
    assert "state" not in read_kd_record(path) and read_kd_record(path)["config"] == cfg.to_dict()


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    from yolo_kd.files import atomic_path, write_text_atomic

    path = write_text_atomic(tmp_path / "args.yaml", "old\n")
    with pytest.raises(OSError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")  # the write fails part-way
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["args.yaml"]


def test_connector_state_written_before_mgd_generators_became_connectors_loads() -> None:
    cfg = KDConfig(kd_feat=1.0, kd_feat_loss="mgd")
    distiller = Distiller([4], [8], cfg)
    old = {k.replace("generators.", "feature_losses."): v + 1 for k, v in connector_state(distiller).items()}
    load_connector_state(distiller, old)
    assert torch.equal(distiller.generators[0].generator[0].bias, old["feature_losses.0.generator.0.bias"])


def test_complete_checkpoints_strips_kd_args_and_keeps_state_out_of_best(tmp_path: Path) -> None:
    scratch_last, scratch_best = tmp_path / "partial-last.pt", tmp_path / "partial-best.pt"
    args = {"epochs": 2, "teacher": "/t.pt", "kd_cls": 1.0}
    for p in (scratch_last, scratch_best):
        ema, model = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
        # Ultralytics' model.args: the trainer's, KD keys and the teacher's path included (a namespace until the
        # final strip makes it a dict)
        ema.args, model.args = IterableSimpleNamespace(**args), dict(args)
        torch.save({"train_args": dict(args), "ema": ema, "model": model}, p)
    record = kd_record(KDConfig(), "/t.pt", "abc", {"w": torch.zeros(1)})
    targets = {"last": tmp_path / "last.pt", "best": tmp_path / "best.pt", "epoch": tmp_path / "epoch1.pt"}
    complete_checkpoints(scratch_last, scratch_best, targets, record, ("teacher", "kd_cls"))
    for name in ("last.pt", "epoch1.pt", "best.pt"):
        ckpt = load_checkpoint_file(tmp_path / name)
        assert ckpt["train_args"] == {"epochs": 2} and ckpt["model"].args == {"epochs": 2}, name
        assert vars(ckpt["ema"].args) == {"epochs": 2} and isinstance(ckpt["ema"].args, IterableSimpleNamespace)
        assert ("state" in ckpt["kd"]) == (name != "best.pt"), name


def test_a_kill_before_last_pt_keeps_the_epochs_periodic_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The save_period copy is written before last.pt: a kill between them leaves last.pt at the epoch before, which
    resume trains (and copies) again, never a last.pt past an epoch whose copy is missing."""
    from yolo_kd import checkpoint

    scratch = tmp_path / "partial-last.pt"
    torch.save({"train_args": {"epochs": 2}}, scratch)
    saved = checkpoint.atomic_save

    def killed_at_last(obj: object, path: Path) -> None:
        if path.name == "last.pt":
            raise KeyboardInterrupt
        saved(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_save", killed_at_last)
    targets = {"last": tmp_path / "last.pt", "best": tmp_path / "best.pt", "epoch": tmp_path / "epoch1.pt"}
    with pytest.raises(KeyboardInterrupt):
        complete_checkpoints(scratch, tmp_path / "none.pt", targets, kd_record(KDConfig(), "/t.pt", None, {}), ())
    assert (tmp_path / "epoch1.pt").is_file() and not (tmp_path / "last.pt").exists()


def test_resume_record_refuses_what_yolo_kd_did_not_write(tmp_path: Path) -> None:
    assert resume_record(False) is None
    with pytest.raises(KDConfigError, match="no such checkpoint"):
        resume_record(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"train_args": {"epochs": 2}}, plain)
    with pytest.raises(KDConfigError, match="not written by yolo-kd"):
        resume_record(plain)
    # killed between Ultralytics' write and yolo-kd's: the record comes from train_args, without connector state
    torch.save({"train_args": {"teacher": "/t.pt", "kd_cls": 2.0, "epochs": 2}}, plain)
    assert resume_record(plain) == {"config": {"kd_cls": 2.0}, "teacher": "/t.pt"}


def test_results_rows_past_the_checkpoint_are_dropped(tmp_path: Path) -> None:
    csv = tmp_path / "results.csv"
    csv.write_text("epoch,loss\n1,0.5\n2,0.4\n3,0.3\n")
    assert trim_results_csv(csv, 2) == 1
    assert csv.read_text() == "epoch,loss\n1,0.5\n2,0.4\n"
    assert trim_results_csv(csv, 2) == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_resume_of_a_finished_run_says_so_in_one_line(tmp_path: Path) -> None:
    last = tmp_path / "weights" / "last.pt"
    last.parent.mkdir()
    # what Ultralytics' strip_optimizer leaves at the end of a run: epoch -1, the KD record without connector state
    torch.save({"epoch": -1, "train_args": {"epochs": 3}, "kd": {"config": {}, "teacher": "/t.pt"}}, last)
    with pytest.raises(KDConfigError, match=r"finished \(epoch 3 of 3\); nothing to resume") as e:
        resume_record(last)
    assert "\n" not in str(e.value) and str(last.with_name("best.pt")) in str(e.value)
    # killed after the last epoch's save, before the final evaluation stripped it: every epoch is trained
    torch.save({"epoch": 2, "train_args": {"epochs": 3}, "kd": {"config": {}, "teacher": "/t.pt"}}, last)
    with pytest.raises(KDConfigError, match="trained every epoch.*nothing to resume"):
        resume_record(last)
    torch.save({"epoch": 1, "train_args": {"epochs": 3}, "kd": {"config": {}, "teacher": "/t.pt"}}, last)
    assert resume_record(last) == {"config": {}, "teacher": "/t.pt"}  # epoch 3 of 3 still to train


def test_a_kill_between_the_two_saves_leaves_best_and_last_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after one of the two saves of a new best epoch: last.pt may lag (the epoch is trained again on
    resume), but never names a best epoch that best.pt does not hold."""
    import yolo_kd.checkpoint as checkpoint

    targets = {"last": tmp_path / "last.pt", "best": tmp_path / "best.pt", "epoch": None}
    for name in ("last.pt", "best.pt"):  # epoch 1's files
        torch.save({"epoch": 1, "best_fitness": 0.1, "train_args": {}}, tmp_path / name)
    scratch_last, scratch_best = tmp_path / "partial-last.pt", tmp_path / "partial-best.pt"
    for p in (scratch_last, scratch_best):  # epoch 2 is a new best
        torch.save({"epoch": 2, "best_fitness": 0.2, "train_args": {}}, p)
    real, calls = checkpoint.atomic_save, []

    def killed_on_second_save(obj: dict, path: Path) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_save", killed_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        complete_checkpoints(scratch_last, scratch_best, targets, {"config": {}}, ())
    last, best = (load_checkpoint_file(targets[k]) for k in ("last", "best"))
    assert last["best_fitness"] <= best["best_fitness"]  # best.pt holds at least the best that last.pt records
    assert (last["epoch"], best["epoch"]) == (1, 2)


def test_scratch_paths_are_empty_on_entry_and_gone_on_exit(tmp_path: Path) -> None:
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    stale = tmp_path / "partial-best.pt"
    stale.write_bytes(b"left by a kill")  # must not pass for a new best in the next save
    with pytest.raises(RuntimeError), scratch_paths(last, best) as (scratch_last, scratch_best):
        assert scratch_best == stale and not scratch_best.exists()
        scratch_last.write_bytes(b"half")
        raise RuntimeError("killed mid-save")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_periodic_copy_only_on_save_period_epochs() -> None:
    wdir = Path("w")
    assert [periodic_copy(wdir, e, 2) for e in range(4)] == [wdir / "epoch0.pt", None, wdir / "epoch2.pt", None]
    assert periodic_copy(wdir, 0, -1) is None and periodic_copy(wdir, 4, 0) is None  # Ultralytics' "off"


def test_restore_connectors_loads_the_recorded_state_and_leaves_them_without_one(tmp_path: Path) -> None:
    cfg = load_kd_config("full")
    trained, fresh = Distiller([4, 8], [8, 16], cfg), Distiller([4, 8], [8, 16], cfg)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    with_state, without = tmp_path / "with.pt", tmp_path / "without.pt"
    atomic_save({"kd": kd_record(cfg, "/t.pt", "abc", connector_state(trained))}, with_state)
    atomic_save({"kd": kd_record(cfg, "/t.pt", "abc")}, without)
    before = connector_state(fresh)
    restore_connectors(fresh, without)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in before.items())
    restore_connectors(fresh, with_state)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in trained.state_dict().items())


def test_resume_without_the_connector_state_is_refused_when_connectors_train() -> None:
    from yolo_kd.settings import settings_from_checkpoint

    for cfg in (KDConfig(kd_feat=1.0), KDConfig(kd_cross=1.0)):  # a best.pt's record: everything but the state
        with pytest.raises(KDConfigError, match="holds no connector state"):
            settings_from_checkpoint(kd_record(cfg, "/nowhere/teacher.pt", None), {})
    # without connectors there is nothing to lose: it goes on to the teacher (here a missing file, refused as such)
    with pytest.raises(KDConfigError) as e:
        settings_from_checkpoint(kd_record(KDConfig(), "/nowhere/teacher.pt", None), {})
    assert "connector state" not in str(e.value)

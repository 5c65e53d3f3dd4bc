"""End-to-end: the KD trainer on generated data with a teacher trained in the test session."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from yolo_kd import KDConfigError, KDDetectionTrainer
from yolo_kd.checkpoint import read_kd_record
from yolo_kd.cli import main
from yolo_kd.config import kd_keys
from yolo_kd.criterion import KDLoss
from yolo_kd.teacher import FrozenTeacher

from .conftest import IMGSZ, tiny_trainer

KD_COLUMNS = ("train/kd_cls", "train/kd_box", "train/kd_feat", "train/kd_cross")


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "results.csv") as f:
        return [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]


def _held_tensors(obj: object) -> list[torch.Tensor]:
    """Every activation-sized tensor (2-d or more) an object's attributes hold, inside tuples, lists and dicts too."""
    found, todo = [], list(vars(obj).values())
    while todo:
        v = todo.pop()
        if isinstance(v, torch.Tensor) and v.dim() > 1 and not isinstance(v, torch.nn.Parameter):
            found.append(v)
        elif isinstance(v, (tuple, list)):
            todo.extend(v)
        elif isinstance(v, dict):
            todo.extend(v.values())
    return found


@pytest.mark.slow
def test_cli_run_logs_every_kd_term(kd_run: Path) -> None:
    rows = _rows(kd_run)
    assert len(rows) == 2
    for row in rows:
        for col in KD_COLUMNS:
            value = float(row[col])
            assert math.isfinite(value) and value > 0, (col, value)
        # validation measures the student alone, with the same columns as training
        assert all(float(row[c.replace("train/", "val/")]) == 0.0 for c in KD_COLUMNS)
        assert float(row["val/box_loss"]) > 0


@pytest.mark.slow
def test_checkpoints_are_plain_students_loadable_without_yolo_kd(kd_run: Path, data_yaml: str) -> None:
    best, last = kd_run / "weights" / "best.pt", kd_run / "weights" / "last.pt"
    for ckpt_path in (best, last):
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        record = ckpt["kd"]
        assert record["config"]["kd_feat_loss"] == "cwd" and "state" not in record  # finished: no connector state
        assert set(ckpt["train_args"]) <= set(__import__("ultralytics").cfg.DEFAULT_CFG_DICT)
        assert not set(ckpt["model"].args) & set(kd_keys()), ckpt_path  # the pickled model's args: Ultralytics' only
    script = textwrap.dedent(
        f"""
        import sys, os
        os.environ["YOLO_OFFLINE"] = "1"
        sys.modules["yolo_kd"] = None  # any import of yolo_kd now raises ImportError
        from ultralytics import YOLO
        model = YOLO({str(best)!r})
        n = sum(p.numel() for p in model.model.parameters())
        assert type(model.model).__name__ == "DetectionModel", type(model.model)
        assert not any("teacher" in k or "connector" in k for k in model.model.state_dict()), "KD state in student"
        assert getattr(model.model, "criterion", None) is None
        model.predict(__import__("numpy").zeros(({IMGSZ}, {IMGSZ}, 3), dtype="uint8"), imgsz={IMGSZ}, verbose=False)
        m = model.val(data={data_yaml!r}, imgsz={IMGSZ}, batch=8, plots=False, verbose=False)
        print("OK", n, m.box.map)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout
    n_params = int(out.stdout.split("OK")[1].split()[0])
    assert n_params < 3.5e6  # a YOLOv8n student (3.0M), nothing of the 11M teacher


@pytest.mark.slow
def test_teacher_frozen_connectors_trained_hooks_gone(data_yaml: str, teacher_pt: str, tmp_path: Path) -> None:
    seen: dict = {}

    def on_train_start(trainer: KDDetectionTrainer) -> None:
        seen["teacher"] = {k: v.clone() for k, v in trainer.kd.teacher.model.state_dict().items()}
        seen["connectors"] = {k: v.clone() for k, v in trainer.kd.distiller.state_dict().items()}
        seen["tap"] = trainer.kd.teacher.tap
        opt_ids = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
        seen["kd_in_opt"] = all(id(p) in opt_ids for p in trainer.kd.distiller.parameters())
        # the EMA copy (what validation runs and checkpoints hold) never gets the KD criterion
        seen["kd_in_ema"] = isinstance(getattr(trainer.ema.ema, "criterion", None), KDLoss)
        seen["teacher_in_opt"] = any(id(p) in opt_ids for p in trainer.kd.teacher.parameters())
        seen["teacher_in_student"] = any("teacher" in k for k in trainer.model.state_dict())

    def on_train_batch_start(trainer: KDDetectionTrainer) -> None:
        if "calls" not in seen:  # count teacher passes: exactly one per training step
            seen["calls"], forward = [0], trainer.kd.teacher.forward

            def counted(images: torch.Tensor) -> dict:
                seen["calls"][0] += 1
                return forward(images)

            trainer.kd.teacher.forward = counted
        seen["steps"] = seen.get("steps", 0) + 1

    def on_train_batch_end(trainer: KDDetectionTrainer) -> None:
        # nothing of the teacher's pass outlives the step: the tap is empty and the criterion holds no activation
        criterion = trainer.model.criterion
        seen["kept"] = seen.get("kept", False) or trainer.kd.teacher.tap.feats is not None
        seen["kept"] |= bool(_held_tensors(criterion))  # the pass run before the forward was consumed too
        seen["teacher_training"] = seen.get("teacher_training", False) or trainer.kd.teacher.model.training
        seen["teacher_grad"] = seen.get("teacher_grad", False) or any(
            p.grad is not None for p in trainer.kd.teacher.parameters()
        )

    trainer = tiny_trainer(data_yaml, teacher_pt, tmp_path, "frozen", kd="full", val=False)
    trainer.add_callback("on_train_start", on_train_start)

    def on_train_end(trainer: KDDetectionTrainer) -> None:
        seen["teacher_after"] = trainer.kd.teacher.model
        seen["connectors_after"] = {k: v.clone() for k, v in trainer.kd.distiller.state_dict().items()}

    trainer.add_callback("on_train_end", on_train_end)
    trainer.add_callback("on_train_batch_start", on_train_batch_start)
    trainer.add_callback("on_train_batch_end", on_train_batch_end)
    trainer.train()
    assert seen["calls"][0] == seen["steps"] == 2, "one teacher pass per training step"
    assert not seen["kept"]

    assert seen["kd_in_opt"] and not seen["teacher_in_opt"] and not seen["teacher_in_student"]
    assert not seen["kd_in_ema"]
    assert not seen["teacher_training"] and not seen["teacher_grad"]
    after = seen["teacher_after"].state_dict()
    assert all(torch.equal(v, after[k]) for k, v in seen["teacher"].items()), "teacher weights or buffers moved"
    moved = [k for k, v in seen["connectors_after"].items() if not torch.equal(v, seen["connectors"][k])]
    assert moved, "connector weights never changed: they are not trained"
    with torch.no_grad():  # after training no hook is left on the teacher: a pass is captured by nothing
        seen["teacher_after"](torch.zeros(1, 3, IMGSZ, IMGSZ))
    with pytest.raises(RuntimeError, match="captured nothing"):
        seen["tap"].pop()
    assert getattr(trainer.model, "criterion", None) is None
    assert trainer.kd is None, "the trainer still holds the teacher"


@pytest.mark.slow
def test_resume_continues_with_teacher_and_connectors(data_yaml: str, teacher_pt: str, tmp_path: Path) -> None:
    class Crash(Exception):
        pass

    def crash_after_first_save(trainer: KDDetectionTrainer) -> None:
        raise Crash

    trainer = tiny_trainer(data_yaml, teacher_pt, tmp_path, "resume", epochs=2, kd="feature", kd_feat_loss="mgd")
    trainer.add_callback("on_model_save", crash_after_first_save)
    with pytest.raises(Crash):
        trainer.train()
    last = tmp_path / "resume" / "weights" / "last.pt"
    record = read_kd_record(last)
    assert record["config"]["kd_feat_loss"] == "mgd" and record["state"]
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"], "scratch files left behind"
    # As after a kill between Ultralytics' results.csv row for epoch 2 and its checkpoint: the row must not survive
    csv_file = tmp_path / "resume" / "results.csv"
    lines = csv_file.read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("1,")
    csv_file.write_text("\n".join([*lines, "2" + lines[1][1:]]) + "\n")

    loaded: dict = {}

    def on_pretrain_routine_end(trainer: KDDetectionTrainer) -> None:
        loaded["state"] = {k: v.detach().cpu().clone() for k, v in trainer.kd.distiller.state_dict().items()}
        loaded["cfg"] = trainer.kd_cfg

    from ultralytics import YOLO

    model = YOLO(str(last))
    model.add_callback("on_pretrain_routine_end", on_pretrain_routine_end)
    model.train(trainer=KDDetectionTrainer, resume=True)
    assert loaded["cfg"].kd_feat_loss == "mgd" and loaded["cfg"].kd_cls == 0
    assert all(torch.equal(v, loaded["state"][k]) for k, v in record["state"].items())
    rows = _rows(tmp_path / "resume")
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]
    assert float(rows[1]["train/kd_feat"]) > 0


@pytest.mark.slow
def test_kd_final_decays_the_kd_gains_over_the_epochs(
    data_yaml: str, teacher_pt: str, tmp_path: Path, assigner_shares: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    shares = assigner_shares
    teacher_passes: list[float] = []  # the epoch's schedule at each teacher pass
    epoch_schedule = [1.0]
    forward = FrozenTeacher.forward

    def counted(self: FrozenTeacher, images: torch.Tensor) -> dict:
        teacher_passes.append(epoch_schedule[0])
        return forward(self, images)

    monkeypatch.setattr(FrozenTeacher, "forward", counted)

    def on_train_epoch_start(trainer: KDDetectionTrainer) -> None:  # runs after yolo-kd's own, which sets it
        epoch_schedule[0] = trainer.model.criterion.schedule

    def on_train_batch_end(trainer) -> None:
        seen.append(trainer.model.criterion.schedule)

    trainer = tiny_trainer(
        data_yaml,
        teacher_pt,
        tmp_path,
        "decay",
        kd="full",
        kd_cross=1.0,
        kd_final=0.0,
        kd_assign=0.8,
        epochs=3,
        kd_lead=0,
    )  # every term on, cross-head KD included, so each column must fade to 0; kd_lead off: the fade alone
    trainer.add_callback("on_train_batch_end", on_train_batch_end)
    trainer.add_callback("on_train_epoch_start", on_train_epoch_start)
    trainer.train()
    assert sorted(set(seen), reverse=True) == [1.0, 0.5, 0.0]  # one value per epoch: 1 -> kd_final, linear
    assert sorted(set(shares), reverse=True) == pytest.approx([0.8, 0.4])  # the teacher's say in assignment too
    assert teacher_passes and 0.0 not in teacher_passes  # the last epoch, all gains at 0, runs no teacher at all
    rows = _rows(tmp_path / "decay")
    assert all(float(rows[0][c]) > 0 for c in KD_COLUMNS)
    assert all(float(rows[2][c]) == 0 for c in KD_COLUMNS) and float(rows[2]["train/cls_loss"]) > 0


def _bad(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> str:
    rc = main(["train", *argv, f"project={tmp_path / 'proj'}", "name=bad", "epochs=1", f"imgsz={IMGSZ}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "proj").exists(), "a run folder was created before the error"
    return err


@pytest.mark.slow
def test_bad_input_stops_before_training(
    data_yaml: str, teacher_pt: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["model=yolov8n.yaml", f"data={data_yaml}"]
    assert "no such file" in _bad([*base, "teacher=missing.pt"], tmp_path, capsys)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert "not a readable Ultralytics checkpoint" in _bad([*base, f"teacher={junk}"], tmp_path, capsys)
    assert "teacher= is required" in _bad(base, tmp_path, capsys)
    assert "kd_temp" in _bad([*base, f"teacher={teacher_pt}", "kd_temp=3"], tmp_path, capsys)  # the CLI names it
    assert "kd_box=-1.0 must be >= 0" in _bad([*base, f"teacher={teacher_pt}", "kd_box=-1"], tmp_path, capsys)
    assert "kd_cls_temp=0.0 must be > 0" in _bad([*base, f"teacher={teacher_pt}", "kd_cls_temp=0"], tmp_path, capsys)
    assert "kd_feat_loss='fitnet'" in _bad([*base, f"teacher={teacher_pt}", "kd_feat_loss=fitnet"], tmp_path, capsys)
    p2 = "model=yolov8n-p2.yaml"  # strides 4..32 against the teacher's 8..32
    assert "strides" in _bad([p2, f"data={data_yaml}", f"teacher={teacher_pt}"], tmp_path, capsys)
    other = Path(data_yaml).with_name("other.yaml")
    other.write_text(
        "".join(ln for ln in Path(data_yaml).read_text().splitlines(True) if not ln.startswith("  ")) + "  0: apple\n"
    )
    assert "no class in common" in _bad(
        ["model=yolov8n.yaml", f"data={other}", f"teacher={teacher_pt}"], tmp_path, capsys
    )
    one = _bad([*base, f"teacher={teacher_pt}", "single_cls=True"], tmp_path, capsys)  # Ultralytics' one class 'item'
    assert "single_cls=True names the student's one class 'item'" in one and "kd_class_map" in one


def test_classifier_teacher_is_rejected(tmp_path: Path) -> None:
    from ultralytics.nn.tasks import ClassificationModel

    from yolo_kd.teacher import load_teacher_model

    path = tmp_path / "cls.pt"
    model = ClassificationModel("yolov8n-cls.yaml", nc=3, verbose=False)
    torch.save({"model": model, "train_args": {}}, path)
    with pytest.raises(KDConfigError, match="not a detection model"):
        load_teacher_model(path)


def test_help_lists_every_kd_key(capsys: pytest.CaptureFixture) -> None:
    from yolo_kd.config import KDConfig

    assert main(["help"]) == 0
    out = capsys.readouterr().out
    for key in ("teacher", "kd", *KDConfig.field_names()):
        assert f"  {key} " in out, key

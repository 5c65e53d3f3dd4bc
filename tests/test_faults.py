"""Runs that survive: a real SIGKILL and resume, a changed or broken teacher, non-finite KD terms."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from yolo_kd.cli import main

from .conftest import IMGSZ, tiny_trainer


def _rows(run: Path) -> list[dict[str, float]]:
    if not (run / "results.csv").exists():
        return []
    with open(run / "results.csv") as f:
        return [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _has_kd_record(path: Path) -> bool:
    try:
        return "kd" in torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # not there yet, or caught mid-write
        return False


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_finishes_with_kd(
    data_yaml: str, teacher_pt: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "yolo_kd.cli",
        "train",
        "model=yolov8n.yaml",
        f"teacher={teacher_pt}",
        f"data={data_yaml}",
        "kd=full",  # connectors too: their state must come back on resume
        "kd_final=1.0",  # constant gains, so every epoch's KD columns are non-zero (the presets fade them to 0)
        "kd_lead=0",  # and not tied to the lead of this 1-epoch teacher, which has none
        "epochs=4",
        f"imgsz={IMGSZ}",
        "batch=2",
        "workers=0",
        "plots=False",
        f"project={tmp_path}",
        "name=killed",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        deadline = time.time() + 300
        last = run / "weights" / "last.pt"
        while not _has_kd_record(last) and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.2)
        time.sleep(0.5)  # into the second epoch
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done = len(_rows(run))
    assert 1 <= done < 4, "the kill must land mid-run"

    assert main(["train", f"resume={run / 'weights' / 'last.pt'}"]) == 0
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["train/kd_cls"] > 0 and r["train/kd_box"] > 0 and r["train/kd_feat"] > 0


@pytest.mark.slow
def test_resume_with_another_teacher_file_is_refused(
    data_yaml: str, teacher_pt: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from yolo_kd import KDDetectionTrainer

    class Stop(Exception):
        pass

    def stop(trainer: KDDetectionTrainer) -> None:
        raise Stop

    trainer = tiny_trainer(data_yaml, teacher_pt, tmp_path, "r", epochs=2, val=False)
    trainer.add_callback("on_model_save", stop)
    with pytest.raises(Stop):
        trainer.train()
    other = tmp_path / "other_teacher.pt"
    ckpt = torch.load(teacher_pt, map_location="cpu", weights_only=False)
    ckpt["date"] = "another file"  # same architecture, different bytes
    torch.save(ckpt, other)
    assert main(["train", f"resume={tmp_path / 'r' / 'weights' / 'last.pt'}", f"teacher={other}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not the teacher this run was trained with" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_truncated_teacher_is_one_clear_error(
    data_yaml: str, teacher_pt: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "broken.pt"
    data = Path(teacher_pt).read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    rc = main(["train", "model=yolov8n.yaml", f"teacher={broken}", f"data={data_yaml}", f"project={tmp_path / 'p'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not a readable Ultralytics checkpoint" in err and len(err.splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "p").exists()


def _kd_student(**kd: object) -> tuple:
    """A yolov8n student with the KD criterion on it, an untrained yolov8n teacher, the distiller, a 2-image batch."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from yolo_kd.config import KDConfig
    from yolo_kd.criterion import KDLoss, probe_head_channels
    from yolo_kd.distiller import Distiller
    from yolo_kd.teacher import FrozenTeacher

    torch.manual_seed(0)
    student = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    student.args = get_cfg()
    cfg = KDConfig(kd_feat=1.0, kd_teacher_amp=False, **kd)  # every term and the teacher-guided assigner
    teacher = FrozenTeacher(DetectionModel("yolov8n.yaml", nc=10, verbose=False), torch.device("cpu"), amp=False)
    modules = Distiller(probe_head_channels(student), probe_head_channels(teacher.model), cfg)
    student.train()
    unlabeled = {"u.png"} if cfg.unlabeled else None
    criterion = KDLoss(student.init_criterion(), teacher, modules, cfg, student.model[-1].reg_max, None, unlabeled)
    student.criterion = criterion
    batch = {
        "img": torch.rand(2, 3, IMGSZ, IMGSZ),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[1.0], [4.0]]),
        "bboxes": torch.tensor([[0.4, 0.4, 0.3, 0.3], [0.6, 0.5, 0.2, 0.4]]),
        "im_file": ["u.png", "l.png"],
    }
    return student, criterion, teacher, modules, batch


def test_non_finite_teacher_output_drops_kd_for_the_step(assigner_shares: list[float]) -> None:
    student, criterion, teacher, modules, batch = _kd_student()
    shares = assigner_shares
    real_forward = teacher.forward

    def poisoned(images: torch.Tensor) -> dict:
        out = real_forward(images)
        out["scores"][0, 0, 0] = float("nan")
        out["feats"][1][0, 0, 0, 0] = float("inf")
        return out

    teacher.forward = poisoned
    loss, items = student.loss(batch)
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert all(float(items[k]) == 0.0 for k in ("kd_cls", "kd_box", "kd_feat"))
    grads = [p.grad for p in [*student.parameters(), *modules.parameters()] if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert criterion.pop_dropped_steps() == 1 and criterion.pop_dropped_steps() == 0
    assert shares == [0.0], "a non-finite teacher must not steer the label assignment"

    teacher.forward = real_forward  # a clean step counts nothing and trains the KD terms again
    student.zero_grad()
    _, items = student.loss(batch)
    assert float(items["kd_cls"]) > 0 and criterion.pop_dropped_steps() == 0
    assert shares == [0.0, 1.0]


def test_non_finite_teacher_predictions_give_no_pseudo_label(tmp_path: Path) -> None:
    # an fp16 overflow in the teacher's decoded boxes must not become a NaN target on an unlabeled image
    import cv2
    import numpy as np

    (tmp_path / "u").mkdir()
    cv2.imwrite(str(tmp_path / "u" / "u.png"), np.zeros((8, 8, 3), dtype=np.uint8))  # unlabeled= needs a folder
    student, criterion, teacher, _, batch = _kd_student(unlabeled=str(tmp_path / "u"), kd_pseudo_conf=0.01)
    batch = {**batch, "batch_idx": torch.tensor([1.0]), "cls": torch.tensor([[4.0]]), "bboxes": batch["bboxes"][1:]}
    real_forward = teacher.forward

    def overflowed(images: torch.Tensor) -> dict:
        out = real_forward(images)
        out["pred"][0, :4, :] = float("nan")  # image 0, the unlabeled one without ground truth: every box
        out["pred"][0, 4, :] = 0.9  # and confident
        return out

    teacher.forward = overflowed
    loss, items = student.loss(batch)
    assert torch.isfinite(loss).all(), loss
    assert criterion.pseudo_boxes == 0 and criterion.pop_dropped_steps() == 1

"""``kd_lead``: the teacher validated on the student's data and classes, and the KD gains that follow its lead."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from yolo_kd.lead import LeadGate, lead_share, student_class_scores, teacher_fitness

from .conftest import IMGSZ, tiny_trainer


def test_lead_share_is_whole_at_the_margin_and_zero_once_caught_up() -> None:
    assert lead_share(0.30, 0.10, 0.02) == 1.0
    assert lead_share(0.30, 0.29, 0.02) == pytest.approx(0.5)
    assert lead_share(0.30, 0.30, 0.02) == 0.0
    assert lead_share(0.30, 0.35, 0.02) == 0.0
    assert lead_share(0.30, 0.35, 0.0) == 1.0  # off


def test_gate_follows_the_students_best_and_is_whole_without_a_teacher_score() -> None:
    assert LeadGate(0.0, 0.04).share(0, None) == 1.0  # no validation yet: whole, even beside a teacher that scores 0
    assert LeadGate(0.0, 0.04).share(1, 0.0) == 0.0  # ... which then has no lead to teach with
    gate = LeadGate(0.30, 0.04)
    assert gate.share(0, None) == 1.0
    assert gate.share(1, 0.28) == pytest.approx(0.5)
    assert gate.share(2, 0.31) == 0.0
    assert gate.share(3, float("nan")) == 0.0  # a NaN fitness (Ultralytics can record one) keeps the last share
    assert LeadGate(None, 0.04).share(3, 0.9) == 1.0  # a DDP worker: rank 0's share is broadcast instead


def test_student_class_scores_reindex_the_teacher_classes() -> None:
    pred = torch.arange(2 * 7 * 5, dtype=torch.float32).view(2, 7, 5)  # 4 box rows, 3 teacher classes
    out = student_class_scores(pred, [(0, 2), (2, 0)], 3)  # student 0 <- teacher 2, student 2 <- teacher 0
    assert out.shape == (2, 7, 5)
    assert torch.equal(out[:, :4], pred[:, :4])
    assert torch.equal(out[:, 4], pred[:, 6]) and torch.equal(out[:, 6], pred[:, 4])
    assert not out[:, 5].any()  # student class 1 has no teacher class


def _val_loader(data_yaml: str) -> tuple[Any, dict[str, Any], Any]:
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.models.yolo.detect import DetectionValidator

    data = check_det_dataset(data_yaml)
    cfg = get_cfg(overrides={"imgsz": IMGSZ, "workers": 0, "plots": False})
    dataset = build_yolo_dataset(cfg, data["val"], 4, data, mode="val", rect=True, stride=32)
    loader = build_dataloader(dataset, 4, 0, shuffle=False, rank=-1)
    return loader, data, lambda: DetectionValidator(loader, args=cfg)


class OracleTeacher:
    """Stands in for a ``FrozenTeacher`` that finds every ground-truth box: keyed by each image's bytes."""

    def __init__(self, loader: Any, nc: int, permute: list[int]) -> None:
        self.device = torch.device("cpu")
        self.nc = nc
        self.truth: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for batch in loader:
            for i, img in enumerate(batch["img"]):
                sel = batch["batch_idx"] == i
                self.truth[self._key(img.float() / 255)] = (batch["cls"][sel].view(-1).long(), batch["bboxes"][sel])
        self.permute = permute  # ground-truth class c is predicted as teacher class permute[c]

    @staticmethod
    def _key(img: torch.Tensor) -> str:
        return hashlib.sha256(img.contiguous().numpy().tobytes()).hexdigest()

    dense = True

    def predictions(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[2:]
        pred = torch.zeros(images.shape[0], 4 + self.nc, 32)
        for i, img in enumerate(images):
            cls, boxes = self.truth[self._key(img)]
            n = len(cls)
            pred[i, :4, :n] = (boxes * torch.tensor([w, h, w, h])).T
            pred[i, 4 + torch.tensor(self.permute)[cls], torch.arange(n)] = 1.0
        return pred


def test_teacher_fitness_is_ultralytics_metric_of_the_teachers_boxes_on_the_student_classes(data_yaml: str) -> None:
    loader, data, new_validator = _val_loader(data_yaml)
    names = data["names"]
    nc = len(names)
    assert nc >= 2
    perfect = teacher_fitness(OracleTeacher(loader, nc, list(range(nc))), new_validator(), data, [], names)
    assert perfect == 0.0  # no class pairs: the teacher scores no class of the student
    pairs = [(c, c) for c in range(nc)]
    perfect = teacher_fitness(OracleTeacher(loader, nc, list(range(nc))), new_validator(), data, pairs, names)
    assert perfect > 0.99
    swapped = [1, 0, *range(2, nc)]  # the teacher's classes 0 and 1 are the student's 1 and 0
    mapped = [(c, swapped[c]) for c in range(nc)]
    assert teacher_fitness(OracleTeacher(loader, nc, swapped), new_validator(), data, mapped, names) > 0.99
    assert teacher_fitness(OracleTeacher(loader, nc, swapped), new_validator(), data, pairs, names) < perfect - 0.1


@pytest.mark.slow
def test_kd_gains_follow_the_teachers_measured_lead(
    data_yaml: str, teacher_pt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yolo_kd.lead

    measured: list[float] = []

    def fixed_fitness(*args: Any) -> float:  # a teacher of known score; its measurement is tested above
        measured.append(0.5)
        return 0.5

    monkeypatch.setattr(yolo_kd.lead, "teacher_fitness", fixed_fitness)
    seen: list[tuple[float, float]] = []

    def on_train_epoch_start(trainer: Any) -> None:  # runs after yolo-kd's own epoch-start callback
        seen.append((trainer.model.criterion.schedule, float(trainer.best_fitness or 0.0)))

    trainer = tiny_trainer(data_yaml, teacher_pt, tmp_path, "lead", kd_lead=1.0, kd_final=1.0, epochs=3)
    trainer.add_callback("on_train_epoch_start", on_train_epoch_start)
    trainer.train()
    assert measured == [0.5]  # once, before training
    assert len(seen) == 3
    assert seen[0] == (1.0, 0.0)  # whole until the student's first validation
    assert all(schedule == pytest.approx(0.5 - best) for schedule, best in seen[1:])  # (teacher - student's best) / 1


def test_a_run_asking_for_half_still_validates_the_teacher_on_fp32_images(data_yaml: str) -> None:
    from ultralytics.cfg import get_cfg
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.nn.tasks import DetectionModel

    from yolo_kd.teacher import FrozenTeacher

    loader, data, new_validator = _val_loader(data_yaml)
    half = get_cfg(overrides={"imgsz": IMGSZ, "workers": 0, "plots": False, "half": True})
    assert half.quantize == 16  # what Ultralytics makes of half=True: its validator would feed fp16 images
    torch.manual_seed(0)
    teacher = FrozenTeacher(DetectionModel("yolov8n.yaml", nc=len(data["names"]), verbose=False), torch.device("cpu"))
    pairs = [(c, c) for c in range(len(data["names"]))]
    asked_half = teacher_fitness(teacher, DetectionValidator(loader, args=half), data, pairs, data["names"])
    assert asked_half == teacher_fitness(teacher, new_validator(), data, pairs, data["names"])


@pytest.mark.slow
def test_teacher_fitness_of_a_real_teacher_equals_ultralytics_validation(data_yaml: str, teacher_pt: str) -> None:
    from ultralytics import YOLO

    from yolo_kd.teacher import FrozenTeacher, load_teacher_model

    loader, data, new_validator = _val_loader(data_yaml)
    # amp as in training (bf16 autocast on CPUs that have it): the validation must still run in fp32, as the student's
    teacher = FrozenTeacher(load_teacher_model(teacher_pt), torch.device("cpu"), feats=False)
    pairs = [(c, c) for c in range(len(data["names"]))]
    fitness = teacher_fitness(teacher, new_validator(), data, pairs, data["names"])
    expected = YOLO(teacher_pt).val(data=data_yaml, imgsz=IMGSZ, batch=4, plots=False, verbose=False).fitness
    assert fitness == pytest.approx(expected, abs=1e-4)
    images = next(iter(loader))["img"].float() / 255
    reference = load_teacher_model(teacher_pt).float().fuse().eval()(images)[0]  # fp32, as the student validates
    assert torch.allclose(teacher.predictions(images), reference, rtol=1e-4, atol=1e-3)


def test_no_gate_where_the_scores_do_not_compare(data_yaml: str) -> None:
    from yolo_kd.lead import measure_lead

    loader, data, new_validator = _val_loader(data_yaml)
    names = data["names"]
    teacher = OracleTeacher(loader, len(names), list(range(len(names))))
    pairs = [(c, c) for c in range(1, len(names))]  # student class 0 has no teacher class
    gate = measure_lead(teacher, new_validator(), data, pairs, names, 0.02)
    assert gate.teacher is None and gate.share(5, 0.99) == 1.0
    every = [(c, c) for c in range(len(names))]
    assert measure_lead(teacher, new_validator(), data, every, names, 0.02, validates=False).teacher is None
    teacher.dense = False  # an end-to-end teacher whose dense branch was fused away
    assert measure_lead(teacher, new_validator(), data, every, names, 0.02).teacher is None
    teacher.dense = True
    gate = measure_lead(teacher, new_validator(), data, every, names, 0.02)
    assert gate.teacher > 0.99 and gate.share(5, 0.5) == 1.0 and gate.share(6, 1.0) == 0.0


def _ddp_worker(data_yaml: str, port: int, out: str) -> None:
    """One rank of a 2-process gloo group (RANK set in its environment): the teacher validated on this rank's shard."""
    import json
    import os

    import torch.distributed as dist
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils import RANK

    from yolo_kd.compat import broadcast_float

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=RANK, world_size=2)
    full, data, _ = _val_loader(data_yaml)
    cfg = get_cfg(overrides={"imgsz": IMGSZ, "workers": 0, "plots": False})
    dataset = build_yolo_dataset(cfg, data["val"], 4, data, mode="val", rect=True, stride=32)
    shard = build_dataloader(dataset, 4, 0, shuffle=False, rank=RANK)
    nc = len(data["names"])
    swapped = [1, 0, *range(2, nc)]
    teacher = OracleTeacher(full, nc, swapped)  # knows every image; each rank is shown its shard only
    pairs = [(c, c) for c in range(nc)]  # the wrong map: partly right, so the gathered score is not trivial
    fitness = teacher_fitness(teacher, DetectionValidator(shard, args=cfg), data, pairs, data["names"])
    shared = broadcast_float(fitness if fitness is not None else -1.0, torch.device("cpu"))
    Path(out).with_suffix(f".{RANK}.json").write_text(json.dumps({"fitness": fitness, "shared": shared}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_under_ddp_rank_0_scores_the_whole_validation_set_and_shares_it(data_yaml: str, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from ultralytics.utils.dist import find_free_network_port

    loader, data, new_validator = _val_loader(data_yaml)
    nc = len(data["names"])
    pairs = [(c, c) for c in range(nc)]
    alone = teacher_fitness(
        OracleTeacher(loader, nc, [1, 0, *range(2, nc)]), new_validator(), data, pairs, data["names"]
    )
    port, out = find_free_network_port(), str(tmp_path / "lead")
    code = f"from tests.test_lead import _ddp_worker; _ddp_worker({data_yaml!r}, {port}, {out!r})"
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=root,
            env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2"},
        )
        for r in (0, 1)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    rank0, rank1 = (json.loads((tmp_path / f"lead.{r}.json").read_text()) for r in (0, 1))
    assert 0.1 < alone < 0.99
    assert rank0["fitness"] == pytest.approx(alone) and rank1["fitness"] is None
    assert rank0["shared"] == rank1["shared"] == pytest.approx(alone)


def test_a_teacher_scoring_under_kd_lead_is_warned_about() -> None:
    import logging

    from ultralytics.utils import LOGGER

    from yolo_kd.report import log_teacher_fitness

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    LOGGER.addHandler(handler)
    try:
        log_teacher_fitness(0.35, 0.02, 1.0)
        assert [r.levelno for r in records] == [logging.INFO]
        log_teacher_fitness(0.01, 0.02, 1.0)
    finally:
        LOGGER.removeHandler(handler)
    assert [r.levelno for r in records[1:]] == [logging.INFO, logging.WARNING]
    assert "under kd_lead=0.02" in records[-1].getMessage()

"""KDLoss: the epoch schedule, the non-finite guard, and cross-head KD through real (tiny, untrained) models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from yolo_kd.config import KDConfig
from yolo_kd.criterion import KDLoss, guard_non_finite
from yolo_kd.distiller import MAX_GRAD_NORM, Distiller, add_connector_group, clip_connector_gradients


def _loss(unlabeled: set[str] | None = None, **kd: float) -> KDLoss:
    teacher = SimpleNamespace(nc=3, device=torch.device("cpu"), reg_max=16)
    return KDLoss(None, teacher, None, KDConfig(kd_assign=0.0, **kd), 16, unlabeled_files=unlabeled)


def test_set_epoch_sets_every_scheduled_quantity() -> None:
    loss = _loss({"u.png"}, kd_final=0.2)
    loss.set_epoch(0, 5, mixing=True)
    assert loss.schedule == 1.0 and loss.pseudo_every_sample
    loss.set_epoch(2, 5, mixing=True)
    assert loss.schedule == pytest.approx(0.6)
    loss.set_epoch(4, 5, mixing=False)  # the last epoch, mosaic closed
    assert loss.schedule == pytest.approx(0.2) and not loss.pseudo_every_sample
    only = _loss()
    only.set_epoch(0, 1, mixing=True)  # a single epoch is the first; no unlabeled images, nothing to pseudo-label
    assert only.schedule == 1.0 and not only.pseudo_every_sample


def test_the_lead_share_multiplies_the_fade() -> None:
    """``kd_lead``'s share scales ``kd_final``'s fade (not the smaller of the two): at the middle epoch of 5 with
    ``kd_final=0.2`` the fade is 0.6, so a lead share of 0.5 gives 0.3 and a share of 0 switches the terms off."""
    loss = _loss(kd_final=0.2)
    loss.set_epoch(2, 5, lead=0.5)
    assert loss.schedule == pytest.approx(0.3)
    loss.set_epoch(4, 5, lead=0.9)  # the last epoch: 0.2 * 0.9, where the smaller of the two would be 0.2
    assert loss.schedule == pytest.approx(0.18)
    loss.set_epoch(0, 5, lead=0.0)
    assert loss.schedule == 0.0


def test_guard_repairs_in_place_and_reports_on_the_device() -> None:
    out = {"boxes": torch.ones(1, 4, 2), "scores": torch.zeros(1, 3, 2), "feats": [torch.ones(1, 2, 2, 2)]}
    out["pred"] = torch.full((1, 7, 2), float("nan"))
    assert bool(guard_non_finite(out))  # predictions are not guarded unless pseudo-labels read them
    assert not bool(guard_non_finite(out, with_pred=True)) and torch.equal(out["pred"], torch.zeros(1, 7, 2))
    out["feats"][0][0, 0, 0, 0] = float("inf")
    finite = guard_non_finite(out)
    assert finite.dim() == 0 and not bool(finite) and torch.isfinite(out["feats"][0]).all()


def test_cross_head_kd_runs_the_frozen_teacher_head_on_the_student_neck() -> None:
    """kd_cross through KDLoss with real models: a fused yolov8s teacher with 4 classes, a yolov8n student with 3.

    The term is positive, trains the student's backbone and neck, leaves the student's Detect head to the ground truth
    and the teacher untouched.
    """
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from yolo_kd.criterion import probe_head_channels
    from yolo_kd.distiller import KD_TERMS, Distiller
    from yolo_kd.teacher import FrozenTeacher

    torch.manual_seed(0)
    student = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    student.args = get_cfg()
    teacher = FrozenTeacher(DetectionModel("yolov8s.yaml", nc=4, verbose=False), torch.device("cpu"), amp=False)
    cfg = KDConfig(kd_cls=0.0, kd_box=0.0, kd_cross=1.0, kd_assign=0.0)
    distiller = Distiller(probe_head_channels(student), probe_head_channels(teacher.model), cfg)
    pairs = [(0, 2), (1, 0), (2, 1)]
    criterion = KDLoss(student.init_criterion(), teacher, distiller, cfg, student.model[-1].reg_max, pairs)
    student.train()
    images = torch.rand(2, 3, 64, 64)
    preds = student(images)
    kd = criterion.terms(criterion.base.parse_output(preds), teacher(images))
    terms = dict(zip(KD_TERMS, kd))
    assert terms["kd_cross"].item() > 0 and terms["kd_cls"].item() == terms["kd_box"].item() == 0.0
    terms["kd_cross"].backward()
    head = student.model[-1]
    assert all(p.grad is None for p in head.parameters())  # the student's head: ground truth only
    assert student.model[0].conv.weight.grad.abs().sum() > 0 and student.model[-2].cv1.conv.weight.grad is not None
    assert all(c.weight.grad is not None for c in distiller.cross_connectors)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_cross_head_outputs_are_class_matched_and_take_the_trainers_precision() -> None:
    """The teacher's head on its own maps gives back its scores on the matched classes, in the order ``terms`` uses;
    maps in the trainer's autocast precision (bf16 here) reach an fp32 head as fp32, and come back as fp32."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_kd.teacher import FrozenTeacher

    torch.manual_seed(0)
    teacher = FrozenTeacher(
        DetectionModel("yolov8n.yaml", nc=4, verbose=False), torch.device("cpu"), amp=False, cross_head=True
    )
    pairs = [(0, 2), (1, 0), (2, 3)]  # student class <- teacher class; teacher class 1 has no student class
    criterion = KDLoss(None, teacher, None, KDConfig(kd_assign=0.0, kd_cross=1.0), 16, class_pairs=pairs)
    images = torch.rand(2, 3, 64, 64)
    out = teacher(images)
    with torch.no_grad():
        cross = criterion.teacher_head(out["feats"])
    assert torch.allclose(cross["scores"], out["scores"][:, [2, 0, 3]], atol=1e-5)
    assert torch.allclose(cross["boxes"], out["boxes"], atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        low = teacher.head_outputs([f.bfloat16() for f in out["feats"]])
    assert low["scores"].dtype == torch.float32 and torch.allclose(low["scores"], out["scores"], atol=0.1)


def test_connectors_get_their_own_group_without_decay_at_lr0() -> None:
    student = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD([{"params": student.parameters(), "lr": 0.03, "weight_decay": 5e-4}], lr=0.03)
    distiller = Distiller([4, 8], [8, 16], KDConfig(kd_feat=1.0))
    add_connector_group(optimizer, distiller, lr=0.01)
    kd = optimizer.param_groups[-1]
    assert len(optimizer.param_groups) == 2 and kd["param_group"] == "kd"
    assert kd["lr"] == 0.01 and kd["weight_decay"] == 0.0 and kd["momentum"] == optimizer.param_groups[0]["momentum"]
    assert {id(p) for p in kd["params"]} == {id(p) for p in distiller.parameters()}
    add_connector_group(optimizer, None, lr=0.01)  # no distiller, no group
    add_connector_group(optimizer, Distiller([4, 8], [8, 16], KDConfig(kd_feat=0.0)), lr=0.01)  # no connectors
    assert len(optimizer.param_groups) == 2


def test_connector_gradients_are_clipped_like_the_students() -> None:
    distiller = Distiller([4, 8], [8, 16], KDConfig(kd_feat=1.0))
    for p in distiller.parameters():
        p.grad = torch.full_like(p, 3.0)
    big = torch.cat([p.grad.flatten() for p in distiller.parameters()]).norm()
    assert big > MAX_GRAD_NORM
    clip_connector_gradients(distiller)
    norm = torch.cat([p.grad.flatten() for p in distiller.parameters()]).norm()
    assert torch.isclose(norm, torch.tensor(MAX_GRAD_NORM), rtol=1e-4)
    # AMP's still-scaled gradients: the bound scales with them, so the unscaled norm ends at 10 as well
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for p in distiller.parameters():
        p.grad = torch.full_like(p, 3.0 * 1024.0)
    clip_connector_gradients(distiller, scaler)
    norm = torch.cat([p.grad.flatten() for p in distiller.parameters()]).norm() / 1024.0
    assert torch.isclose(norm, torch.tensor(MAX_GRAD_NORM), rtol=1e-4)
    small = Distiller([4, 8], [8, 16], KDConfig(kd_feat=1.0))
    for p in small.parameters():
        p.grad = torch.full_like(p, 1e-3)
    before = [p.grad.clone() for p in small.parameters()]
    clip_connector_gradients(small, scaler)  # 1e-3 * sqrt(n) under 10 * 1024: untouched
    assert all(torch.equal(b, p.grad) for b, p in zip(before, small.parameters()))
    clip_connector_gradients(None)  # no distiller: nothing to do

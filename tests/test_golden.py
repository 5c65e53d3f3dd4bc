"""Golden values of the combined, gain-scaled, class-mapped KD terms on fixed inputs.

The expected numbers were computed once from the code before the trainer/criterion restructuring (issue 13) and are
kept as literals, so any change in what the KD terms compute shows up here, not only in a training curve.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from yolo_kd.config import KDConfig

B, A, REG_MAX = 2, 20, 4
S_CH, T_CH = [4, 6], [5, 8]
SIZES = [(4, 4), (2, 2)]
CLASS_PAIRS = [(0, 2), (1, 0), (2, 1)]  # student class <- teacher class; teacher class 3 has no student class


def _fill(module: torch.nn.Module) -> None:
    """Set every parameter from its shape alone, so the values do not depend on init order or parameter names."""
    with torch.no_grad():
        for p in module.parameters():
            n = p.numel()
            p.copy_((torch.sin(torch.arange(n, dtype=torch.float32) * 0.37 + n * 0.01) * 0.2).view_as(p))


def _heads() -> tuple[dict[str, Any], dict[str, Any]]:
    g = torch.Generator().manual_seed(7)
    student = {
        "scores": torch.randn(B, 3, A, generator=g) * 2,
        "boxes": torch.randn(B, 4 * REG_MAX, A, generator=g),
        "feats": [torch.randn(B, c, *hw, generator=g) for c, hw in zip(S_CH, SIZES)],
    }
    teacher = {
        "scores": torch.randn(B, 4, A, generator=g) * 2,
        "boxes": torch.randn(B, 4 * REG_MAX, A, generator=g),
        "feats": [torch.randn(B, c, *hw, generator=g) for c, hw in zip(T_CH, SIZES)],
    }
    return student, teacher


def _cfg(feat_loss: str) -> KDConfig:
    return KDConfig(
        kd_cls=1.5,
        kd_box=0.7,
        kd_feat=2.0,
        kd_cls_temp=2.0,
        kd_box_temp=3.0,
        kd_feat_temp=1.5,
        kd_feat_loss=feat_loss,
        kd_weight_power=2.0,
        kd_assign=0.0,
        kd_final=0.2,
        kd_teacher_amp=False,
    )


def _terms(feat_loss: str, train: bool) -> list[float]:
    """[kd_cls, kd_box, kd_feat, kd_cross] at the middle epoch of 3 (schedule 1 + (0.2 - 1) * 0.5 = 0.6)."""
    from yolo_kd.criterion import KDLoss
    from yolo_kd.distiller import Distiller

    cfg = _cfg(feat_loss)
    modules = Distiller(S_CH, T_CH, cfg)
    _fill(modules)
    modules.train(train)
    teacher = SimpleNamespace(nc=4, device=torch.device("cpu"), reg_max=REG_MAX)
    loss = KDLoss(None, teacher, modules, cfg, REG_MAX, class_pairs=CLASS_PAIRS)
    loss.set_epoch(1, 3)
    student, t_out = _heads()
    torch.manual_seed(3)  # MGD's random mask in training mode
    return loss.terms(student, t_out).tolist()


GOLDEN_TERMS = {
    # the fourth term, kd_cross (added after the restructuring), is off in these settings
    ("cwd", False): [2.1736974716186523, 0.2904941141605377, 0.5424549579620361, 0.0],
    ("mgd", False): [2.1736974716186523, 0.2904941141605377, 1.1609582901000977, 0.0],
    ("mgd", True): [2.1736974716186523, 0.2904941141605377, 1.1488895416259766, 0.0],
}


@pytest.mark.parametrize(("feat_loss", "train"), list(GOLDEN_TERMS))
def test_kd_terms_match_the_golden_values(feat_loss: str, train: bool) -> None:
    assert _terms(feat_loss, train) == pytest.approx(GOLDEN_TERMS[(feat_loss, train)], rel=1e-5, abs=1e-7)


def _step_losses() -> list[float]:
    """One criterion call on tiny untrained models: detection loss, then the KD terms, all scaled by batch size.

    Teacher-guided assignment (kd_assign=0.7), a class map and every KD term run; the teacher is a second yolov8n
    with 4 classes and the student has 3.
    """
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from yolo_kd.criterion import KDLoss, probe_head_channels
    from yolo_kd.distiller import Distiller
    from yolo_kd.teacher import FrozenTeacher

    torch.manual_seed(0)
    student = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    student.args = get_cfg()
    teacher = FrozenTeacher(DetectionModel("yolov8n.yaml", nc=4, verbose=False), torch.device("cpu"), amp=False)
    cfg = KDConfig(kd_feat=1.0, kd_assign=0.7, kd_final=0.2, kd_teacher_amp=False)
    modules = Distiller(probe_head_channels(student), probe_head_channels(teacher.model), cfg)
    _fill(modules)
    student.train()
    criterion = KDLoss(student.init_criterion(), teacher, modules, cfg, student.model[-1].reg_max, CLASS_PAIRS)
    criterion.set_epoch(1, 3)
    student.criterion = criterion
    g = torch.Generator().manual_seed(1)
    batch = {
        "img": torch.rand(2, 3, 64, 64, generator=g),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
        "cls": torch.tensor([[0.0], [2.0], [1.0]]),
        "bboxes": torch.tensor([[0.3, 0.3, 0.3, 0.4], [0.7, 0.6, 0.2, 0.3], [0.5, 0.5, 0.5, 0.4]]),
        "im_file": ["a.png", "b.png"],
    }
    loss, _ = student.loss(batch)
    return loss.tolist()


GOLDEN_STEP = [
    2.1389195919036865,  # box
    1.5581107139587402,  # cls
    1.244031310081482,  # dfl
    0.01127971988171339,  # kd_cls
    0.03225275129079819,  # kd_box
    0.40627261996269226,  # kd_feat
    0.0,  # kd_cross (off)
]


def test_one_criterion_step_matches_the_golden_values() -> None:
    assert _step_losses() == pytest.approx(GOLDEN_STEP, rel=1e-4, abs=1e-6)

"""KDLoss without a model: the epoch schedule and the non-finite guard."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from yolo_kd.config import KDConfig
from yolo_kd.criterion import KDLoss, guard_non_finite


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


def test_guard_repairs_in_place_and_reports_on_the_device() -> None:
    out = {"boxes": torch.ones(1, 4, 2), "scores": torch.zeros(1, 3, 2), "feats": [torch.ones(1, 2, 2, 2)]}
    out["pred"] = torch.full((1, 7, 2), float("nan"))
    assert bool(guard_non_finite(out))  # predictions are not guarded unless pseudo-labels read them
    assert not bool(guard_non_finite(out, with_pred=True)) and torch.equal(out["pred"], torch.zeros(1, 7, 2))
    out["feats"][0][0, 0, 0, 0] = float("inf")
    finite = guard_non_finite(out)
    assert finite.dim() == 0 and not bool(finite) and torch.isfinite(out["feats"][0]).all()

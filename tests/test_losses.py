"""Unit tests of every distillation loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from yolo_kd.losses import FEATURE_LOSSES, ChannelWiseKD, DistributionKD, MaskedGenerativeKD, SigmoidLogitKD

torch.manual_seed(0)


def _pair(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.randn(shape, requires_grad=True)
    t = torch.randn(shape, requires_grad=True)  # requires_grad so a leak of gradient into the teacher would show
    return s, t


CASES = {
    "logit": (lambda: SigmoidLogitKD(2.0), (2, 5, 30), True),
    "box": (lambda: DistributionKD(reg_max=4, temperature=2.0), (2, 16, 30), True),
    "cwd": (lambda: ChannelWiseKD(6, temperature=2.0), (2, 6, 5, 5), False),
}


@pytest.mark.parametrize("name", CASES)
def test_zero_when_student_equals_teacher(name: str) -> None:
    make, shape, weighted = CASES[name]
    x = torch.randn(shape)
    args = (torch.rand(shape[0], shape[-1]),) if weighted else ()
    assert make()(x.clone(), x.clone(), *args).abs().item() < 1e-6


@pytest.mark.parametrize("name", CASES)
def test_positive_and_gradient_only_into_student(name: str) -> None:
    make, shape, weighted = CASES[name]
    s, t = _pair(shape)
    args = (torch.rand(shape[0], shape[-1]),) if weighted else ()
    loss = make()(s, t, *args)
    assert loss.item() > 0
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("name", CASES)
def test_normalisation_does_not_depend_on_batch_size(name: str) -> None:
    make, shape, weighted = CASES[name]
    s, t = torch.randn(shape), torch.randn(shape)
    w = torch.rand(shape[0], shape[-1]) if weighted else None
    args, args4 = ((w,), (w.repeat(2, 1),)) if weighted else ((), ())
    loss = make()(s, t, *args)
    rep = (2,) + (1,) * (len(shape) - 1)
    assert torch.allclose(loss, make()(s.repeat(rep), t.repeat(rep), *args4), rtol=1e-5)


def test_logit_hand_computed() -> None:
    # one anchor, one class, T=1: KL(Bern(p_t) || Bern(p_s)) = p_t log(p_t/p_s) + (1-p_t) log((1-p_t)/(1-p_s))
    s, t = torch.tensor([[[0.0]]]), torch.tensor([[[math.log(3.0)]]])  # p_s = 0.5, p_t = 0.75
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert SigmoidLogitKD(1.0)(s, t).item() == pytest.approx(expected, rel=1e-5)
    # T=2 divides the logits by 2 and scales the loss by 4
    p_s, p_t = 0.5, 1 / (1 + math.exp(-math.log(3.0) / 2))
    expected_t2 = 4 * (p_t * math.log(p_t / p_s) + (1 - p_t) * math.log((1 - p_t) / (1 - p_s)))
    assert SigmoidLogitKD(2.0)(s, t).item() == pytest.approx(expected_t2, rel=1e-5)


def test_logit_weights_select_anchors() -> None:
    s, t = torch.zeros(1, 1, 2), torch.tensor([[[math.log(3.0), 5.0]]])
    only_first = SigmoidLogitKD(1.0)(s, t, torch.tensor([[1.0, 0.0]]))
    assert only_first.item() == pytest.approx(SigmoidLogitKD(1.0)(s[..., :1], t[..., :1]).item(), rel=1e-6)


def test_box_hand_computed() -> None:
    # reg_max=2, T=1; every side: student uniform (0.5, 0.5), teacher softmax([log 3, 0]) = (0.75, 0.25)
    s = torch.zeros(1, 8, 1)
    t = torch.tensor([math.log(3.0), 0.0] * 4).view(1, 8, 1)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert DistributionKD(reg_max=2, temperature=1.0)(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_cwd_hand_computed() -> None:
    # one channel over two pixels: student uniform, teacher softmax([log 3, 0]) -> same KL as above, T=1
    s = torch.zeros(1, 1, 1, 2)
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 1, 1, 2)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert ChannelWiseKD(1, temperature=1.0)(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_mgd_trains_its_generator_and_not_the_teacher() -> None:
    torch.manual_seed(0)
    loss_fn = MaskedGenerativeKD(4, mask_ratio=0.5)
    s, t = _pair((2, 4, 6, 6))
    loss = loss_fn(s, t)
    loss.backward()
    assert loss.item() > 0 and t.grad is None and s.grad is not None
    assert all(p.grad is not None for p in loss_fn.parameters())
    # hand check in eval mode (no mask): the generator's output against the teacher, mean squared error
    loss_fn.eval()
    with torch.no_grad():
        expected = F.mse_loss(loss_fn.generator(s), t)
        assert loss_fn(s, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_mgd_normalisation_does_not_depend_on_batch_size() -> None:
    loss_fn = MaskedGenerativeKD(4, mask_ratio=0.0)
    s, t = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    assert torch.allclose(loss_fn(s, t), loss_fn(s.repeat(3, 1, 1, 1), t.repeat(3, 1, 1, 1)), rtol=1e-5)


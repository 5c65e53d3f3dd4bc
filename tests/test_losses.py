"""Unit tests of every distillation loss, MGD's generator connector and the distiller's named terms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from yolo_kd.config import KDConfig
from yolo_kd.connectors import MGDGenerator
from yolo_kd.distiller import KD_TERMS, Distiller
from yolo_kd.losses import ChannelWiseKD, DistributionKD, MaskedGenerativeKD, PearsonKD, SigmoidLogitKD

torch.manual_seed(0)


def _pair(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.randn(shape, requires_grad=True)
    t = torch.randn(shape, requires_grad=True)  # requires_grad so a leak of gradient into the teacher would show
    return s, t


CASES = {
    "logit": (lambda: SigmoidLogitKD(2.0), (2, 5, 30), True),
    "box": (lambda: DistributionKD(temperature=2.0), (2, 16, 30), True),
    "cwd": (lambda: ChannelWiseKD(temperature=2.0), (2, 6, 5, 5), False),
    "mgd": (MaskedGenerativeKD, (2, 6, 5, 5), False),
    "pkd": (PearsonKD, (2, 6, 5, 5), False),
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
    assert DistributionKD(temperature=1.0)(s, t).item() == pytest.approx(expected, rel=1e-5)
    # T=2: the teacher's logits halved, p_t = softmax([log 3 / 2, 0]), and the KL scaled by T**2 = 4
    assert DistributionKD(temperature=2.0)(s, t).item() == pytest.approx(_kl_vs_uniform_t2(), rel=1e-5)


def _kl_vs_uniform_t2() -> float:
    """4 * KL(softmax([log 3 / 2, 0]) || (0.5, 0.5)): the two-bin case of the hand-computed tests at T=2."""
    p0 = math.sqrt(3.0) / (math.sqrt(3.0) + 1.0)
    p1 = 1.0 - p0
    return 4 * (p0 * math.log(2 * p0) + p1 * math.log(2 * p1))


def test_pkd_hand_computed() -> None:
    s = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    assert PearsonKD()(s, 10 * s + 3).item() == pytest.approx(0.0, abs=1e-6)  # correlation 1: offsets, scales drop out
    assert PearsonKD()(s, -s).item() == pytest.approx(2.0, rel=1e-5)  # correlation -1
    t = torch.tensor([1.0, 3.0, 2.0, 4.0]).view(1, 1, 2, 2)
    # Pearson r of (1,2,3,4) and (1,3,2,4): centred (-1.5,-.5,.5,1.5) and (-1.5,.5,-.5,1.5): (2.25-.25-.25+2.25)/5 = 0.8
    assert PearsonKD()(s, t).item() == pytest.approx(0.2, rel=1e-5)
    # two channels: 1 - 0.8 and 1 - (-1), averaged; and two images of one channel are one sample of 8 values
    assert PearsonKD()(torch.cat([s, s], 1), torch.cat([t, -s], 1)).item() == pytest.approx((0.2 + 2.0) / 2, rel=1e-5)
    assert PearsonKD()(torch.cat([s, s + 10]), torch.cat([t, t + 10])).item() < 0.05  # the offset is shared signal


def test_cwd_hand_computed() -> None:
    # one channel over two pixels: student uniform, teacher softmax([log 3, 0]) -> same KL as above, T=1
    s = torch.zeros(1, 1, 1, 2)
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 1, 1, 2)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert ChannelWiseKD(temperature=1.0)(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert ChannelWiseKD(temperature=2.0)(s, t).item() == pytest.approx(_kl_vs_uniform_t2(), rel=1e-5)
    # a second channel where student and teacher agree adds 0: the mean over channels halves the loss
    s2, t2 = torch.cat([s, torch.zeros_like(s)], 1), torch.cat([t, torch.zeros_like(t)], 1)
    assert ChannelWiseKD(temperature=1.0)(s2, t2).item() == pytest.approx(expected / 2, rel=1e-5)


def test_mgd_hand_computed() -> None:
    # generated map (1, 3) against a teacher map of zeros: (1**2 + 3**2) / 2 elements
    generated, teacher = torch.tensor([[[[1.0, 3.0]]]]), torch.zeros(1, 1, 1, 2)
    assert MaskedGenerativeKD()(generated, teacher).item() == pytest.approx(5.0)


def test_mgd_generator_trains_masks_only_in_training_and_not_the_teacher() -> None:
    torch.manual_seed(0)
    generator, loss_fn = MGDGenerator(4, mask_ratio=0.5), MaskedGenerativeKD()
    s, t = _pair((2, 4, 6, 6))
    loss = loss_fn(generator(s), t)
    loss.backward()
    assert loss.item() > 0 and t.grad is None and s.grad is not None
    assert all(p.grad is not None for p in generator.parameters())
    # in eval mode nothing is masked: the generator's output against the teacher, mean squared error
    generator.eval()
    with torch.no_grad():
        assert loss_fn(generator(s), t).item() == pytest.approx(F.mse_loss(generator.generator(s), t).item(), rel=1e-6)
    generator.train()
    torch.manual_seed(1)
    masked = generator(s)
    assert not torch.allclose(masked, generator.generator(s)), "training mode masks pixels"


def test_mgd_normalisation_does_not_depend_on_batch_size() -> None:
    generator, loss_fn = MGDGenerator(4, mask_ratio=0.0), MaskedGenerativeKD()
    s, t = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    rep = (3, 1, 1, 1)
    assert torch.allclose(loss_fn(generator(s), t), loss_fn(generator(s.repeat(rep)), t.repeat(rep)), rtol=1e-5)


@pytest.mark.parametrize("feat_loss", ["cwd", "mgd", "pkd"])
def test_distiller_returns_each_named_term_scaled_by_its_gain(feat_loss: str) -> None:
    torch.manual_seed(0)
    s_ch, t_ch, sizes = [4, 6], [5, 8], [(4, 4), (2, 2)]

    def heads(channels: list[int]) -> dict:
        return {
            "scores": torch.randn(2, 3, 20),
            "boxes": torch.randn(2, 16, 20),
            "feats": [torch.randn(2, c, *hw) for c, hw in zip(channels, sizes)],
        }

    student, teacher = heads(s_ch), heads(t_ch)
    one = Distiller(s_ch, t_ch, KDConfig(kd_cls=1.0, kd_box=1.0, kd_feat=1.0, kd_feat_loss=feat_loss)).eval()
    terms = one(student, teacher)
    assert list(terms) == list(KD_TERMS) and all(v.dim() == 0 for v in terms.values())
    assert all(terms[k].item() > 0 for k in ("kd_cls", "kd_box", "kd_feat")) and terms["kd_cross"].item() == 0.0
    scaled = Distiller(s_ch, t_ch, KDConfig(kd_cls=2.0, kd_box=0.5, kd_feat=3.0, kd_feat_loss=feat_loss)).eval()
    scaled.load_state_dict(one.state_dict())
    got = scaled(student, teacher)
    for name, gain in zip(KD_TERMS, (2.0, 0.5, 3.0)):
        assert got[name].item() == pytest.approx(gain * terms[name].item(), rel=1e-5)
    # a gain of 0 switches its term off (no connector is built for the feature term), and no boxes no box term
    off = Distiller(s_ch, t_ch, KDConfig(kd_cls=0.0, kd_feat=0.0, kd_feat_loss=feat_loss))
    assert not list(off.parameters())
    zeros = off({**student, "boxes": None}, {**teacher, "boxes": None})
    assert all(v.item() == 0.0 for v in zeros.values())


class _TinyHead(torch.nn.Module):
    """A two-level stand-in for a frozen teacher Detect head: 1x1 convs to DFL bins (4 x 4) and 3 class logits."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.box = torch.nn.ModuleList(torch.nn.Conv2d(c, 16, 1) for c in channels)
        self.cls = torch.nn.ModuleList(torch.nn.Conv2d(c, 3, 1) for c in channels)
        self.requires_grad_(False)  # frozen, as FrozenTeacher leaves it

    def forward(self, maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        b = maps[0].shape[0]
        boxes = torch.cat([m(x).view(b, 16, -1) for m, x in zip(self.box, maps)], -1)
        scores = torch.cat([m(x).view(b, 3, -1) for m, x in zip(self.cls, maps)], -1)
        return {"boxes": boxes, "scores": scores}


def _cross(s_ch: list[int], t_ch: list[int]) -> tuple[Distiller, _TinyHead, list[torch.Tensor], dict]:
    torch.manual_seed(0)
    head = _TinyHead(t_ch)
    t_maps = [torch.randn(2, c, *hw) for c, hw in zip(t_ch, [(4, 4), (2, 2)])]
    teacher = {**head(t_maps), "feats": [], "head": head}
    s_maps = [torch.randn(2, c, *hw, requires_grad=True) for c, hw in zip(s_ch, [(4, 4), (2, 2)])]
    distiller = Distiller(s_ch, t_ch, KDConfig(kd_cls=0.0, kd_box=0.0, kd_cross=1.0))
    return distiller, head, s_maps, teacher


def test_cross_head_kd_is_zero_when_the_student_maps_are_the_teachers() -> None:
    distiller, head, _, teacher = _cross([4, 6], [4, 6])
    t_maps = [torch.randn(2, c, *hw) for c, hw in zip([4, 6], [(4, 4), (2, 2)])]
    teacher = {**head(t_maps), "feats": [], "head": head}
    with torch.no_grad():
        for conn in distiller.cross_connectors:  # identity connectors: the teacher's head sees the teacher's maps
            conn.weight.copy_(torch.eye(conn.weight.shape[0]).view_as(conn.weight))
            conn.bias.zero_()
    student = {"scores": torch.randn(2, 3, 20), "boxes": None, "feats": t_maps}
    assert distiller(student, teacher)["kd_cross"].item() == pytest.approx(0.0, abs=1e-6)


def test_cross_head_kd_trains_the_student_maps_and_connectors_not_the_head_or_the_student_head() -> None:
    distiller, head, s_maps, teacher = _cross([4, 6], [5, 8])
    teacher = {k: (v.requires_grad_(True) if isinstance(v, torch.Tensor) else v) for k, v in teacher.items()}
    s_scores = torch.randn(2, 3, 20, requires_grad=True)
    terms = distiller({"scores": s_scores, "boxes": None, "feats": s_maps}, teacher)
    assert terms["kd_cross"].item() > 0 and terms["kd_cls"].item() == 0.0
    terms["kd_cross"].backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in s_maps)  # into the student's neck maps
    assert all(c.weight.grad is not None for c in distiller.cross_connectors)
    assert s_scores.grad is None  # the student's own head output gets no KD target
    assert all(p.grad is None for p in head.parameters())
    assert teacher["scores"].grad is None and teacher["boxes"].grad is None


def test_cross_head_kd_is_logit_plus_box_kd_of_the_teachers_head_on_the_connected_maps() -> None:
    distiller, head, s_maps, teacher = _cross([4, 6], [5, 8])
    got = distiller({"scores": torch.randn(2, 3, 20), "boxes": None, "feats": s_maps}, teacher)["kd_cross"]
    cross = head([conn(m) for conn, m in zip(distiller.cross_connectors, s_maps)])
    weight = teacher["scores"].sigmoid().amax(1)
    logit = SigmoidLogitKD(2.0)(cross["scores"], teacher["scores"], weight)
    box = DistributionKD(2.0)(cross["boxes"], teacher["boxes"], weight)
    assert got.item() == pytest.approx((logit + box).item(), rel=1e-6)
    no_box = distiller({"scores": torch.randn(2, 3, 20), "boxes": None, "feats": s_maps}, {**teacher, "boxes": None})
    assert no_box["kd_cross"].item() == pytest.approx(logit.item(), rel=1e-6)


def test_cross_head_kd_needs_as_many_levels_in_both_heads() -> None:
    from yolo_kd.config import KDConfigError

    with pytest.raises(KDConfigError, match="kd_cross: the student's head has 2 levels, the teacher's 3"):
        Distiller([4, 6], [4, 6, 8], KDConfig(kd_cross=1.0))

"""Teacher-guided label assignment (kd_assign): decoding, blending, and a training run that keeps nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ultralytics.utils.tal import TaskAlignedAssigner

from yolo_kd.assign import TeacherGuidedAssigner, dense_loss, teacher_predictions
from yolo_kd.config import KDConfigError, load_kd_config

from .conftest import tiny_trainer


def test_teacher_boxes_decoded_by_hand() -> None:
    # one 2x1 grid at stride 8 (anchors at x = 4 and 12 px, y = 4 px); 4 bins per side, all mass on bin 2 -> distance
    # 2 cells = 16 px each side; reg_max 1 (plain distances) gives the distance itself
    feats = [torch.zeros(1, 1, 1, 2)]
    stride = torch.tensor([8.0])
    logits = torch.full((1, 4, 4, 2), -1e4)
    logits[:, :, 2] = 0.0
    scores = torch.tensor([[[0.0, 2.0]]])  # one class
    _, boxes = teacher_predictions(scores, logits.view(1, 16, 2), feats, stride, 4, scores, None)
    assert torch.allclose(boxes[0], torch.tensor([[-12.0, -12.0, 20.0, 20.0], [-4.0, -12.0, 28.0, 20.0]]))
    prob, boxes1 = teacher_predictions(scores, torch.ones(1, 4, 2), feats, stride, 1, scores, None)
    assert torch.allclose(boxes1[0, 0], torch.tensor([-4.0, -4.0, 12.0, 12.0]))
    assert prob.shape == (1, 2, 1) and torch.allclose(prob[0, :, 0], torch.tensor([0.0, 2.0]).sigmoid())


def test_decoding_matches_what_ultralytics_gives_its_assigner() -> None:
    # the student's own head outputs as the "teacher": the decode must equal v8DetectionLoss's own, so a change of
    # layout or units in Ultralytics shows up here
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.tal import make_anchors

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    model.args = get_cfg()
    base = model.init_criterion()
    with torch.no_grad():
        preds = base.parse_output(model.train()(torch.rand(2, 3, 64, 64)))
    anchors, strides = make_anchors(preds["feats"], base.stride, 0.5)
    want_boxes = base.bbox_decode(anchors, preds["boxes"].permute(0, 2, 1).contiguous()) * strides
    want_scores = preds["scores"].permute(0, 2, 1).sigmoid()
    scores, boxes = teacher_predictions(
        preds["scores"], preds["boxes"], preds["feats"], base.stride, base.reg_max, preds["scores"], None
    )
    assert torch.allclose(boxes, want_boxes, atol=1e-4) and torch.allclose(scores, want_scores)


def test_classes_the_teacher_lacks_keep_the_students_score() -> None:
    feats, stride = [torch.zeros(1, 1, 1, 1)], torch.tensor([8.0])
    student = torch.tensor([[[1.0], [-1.0], [3.0]]])  # 3 student classes
    teacher = torch.tensor([[[-2.0], [0.0]]])  # 2 teacher classes: teacher 1 = student 2, teacher 0 = student 0
    index = (torch.tensor([2, 0]), torch.tensor([1, 0]))
    prob, _ = teacher_predictions(teacher, torch.zeros(1, 4, 1), feats, stride, 1, student, index)
    assert torch.allclose(prob[0, 0], torch.tensor([-2.0, -1.0, 0.0]).sigmoid())


def test_blend_assigns_from_teacher_student_or_between() -> None:
    torch.manual_seed(0)
    assigner = TaskAlignedAssigner(topk=3, num_classes=2, alpha=0.5, beta=6.0)
    b, a = 1, 16
    anchors = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="xy"), -1).view(-1, 2) * 8 + 4
    gt_labels, gt_boxes, mask = torch.tensor([[[1.0]]]), torch.tensor([[[0.0, 0.0, 20.0, 20.0]]]), torch.ones(1, 1, 1)
    s_scores, t_scores = torch.rand(b, a, 2), torch.rand(b, a, 2)
    s_boxes = torch.rand(b, a, 4) * 16 + torch.tensor([0.0, 0.0, 8.0, 8.0])
    t_boxes = torch.tensor([0.0, 0.0, 20.0, 20.0]).expand(b, a, 4) + torch.rand(b, a, 4)
    guided = TeacherGuidedAssigner(assigner, 1.0, (t_scores, t_boxes))
    args = (anchors, gt_labels, gt_boxes, mask)
    out = guided(s_scores, s_boxes, *args)
    ref_t, ref_s = assigner(t_scores, t_boxes, *args), assigner(s_scores, s_boxes, *args)
    assert all(torch.equal(x, y) for x, y in zip(out, ref_t))
    assert not torch.equal(ref_t[2], ref_s[2]), "the two predictions must assign differently for this test to bite"
    mid = assigner(torch.lerp(s_scores, t_scores, 0.5), torch.lerp(s_boxes, t_boxes, 0.5), *args)
    half = TeacherGuidedAssigner(assigner, torch.tensor(0.5), (t_scores, t_boxes))
    assert all(torch.equal(x, y) for x, y in zip(half(s_scores, s_boxes, *args), mid))
    assert guided.topk == 3  # attributes of the wrapped assigner stay readable


def test_guided_assignment_lasts_for_its_block_only() -> None:
    from types import SimpleNamespace

    from yolo_kd.compat import guided_assignment

    own = TaskAlignedAssigner(topk=3, num_classes=2)
    loss = SimpleNamespace(assigner=own)
    teacher = (torch.zeros(1, 4, 2), torch.zeros(1, 4, 4))
    with guided_assignment(loss, teacher, 0.25) as guided:
        assert loss.assigner is guided and guided.assigner is own and guided.share == 0.25
    assert loss.assigner is own, "the detection loss gets its own assigner back"
    with pytest.raises(RuntimeError), guided_assignment(loss, teacher, 1.0):
        raise RuntimeError("a failed step")
    assert loss.assigner is own


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo26n.yaml"])
def test_the_dense_branch_is_the_one_guided(cfg: str) -> None:
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(cfg, nc=3, verbose=False)
    model.args = get_cfg()
    base = model.init_criterion()
    dense = dense_loss(base)
    assert dense is (base.one2many if hasattr(base, "one2many") else base)  # YOLO26: one2many, never one2one


def test_kd_assign_range_is_checked() -> None:
    with pytest.raises(KDConfigError, match="kd_assign"):
        load_kd_config(kd_assign=1.5)


@pytest.mark.slow
def test_training_with_teacher_assignment_keeps_nothing(data_yaml: str, teacher_pt: str, tmp_path: Path) -> None:
    seen: dict = {"plain": 0}

    def on_train_batch_end(trainer) -> None:
        # between steps the criterion has its own assigner: no teacher tensor kept
        seen["plain"] += isinstance(trainer.model.criterion.base.assigner, TaskAlignedAssigner)

    trainer = tiny_trainer(data_yaml, teacher_pt, tmp_path, "assign", kd_assign=1.0, val=False)
    trainer.add_callback("on_train_batch_end", on_train_batch_end)
    calls = []
    forward = TeacherGuidedAssigner.__call__

    def counted(self, *args, **kwargs):
        calls.append(self.teacher is not None)
        return forward(self, *args, **kwargs)

    TeacherGuidedAssigner.__call__ = counted
    try:
        trainer.train()
    finally:
        TeacherGuidedAssigner.__call__ = forward
    assert seen["plain"] == 2
    assert calls == [True, True], "the assigner ranked the teacher's predictions at each of the 2 steps"
    assert (trainer.save_dir / "weights" / "last.pt").is_file()

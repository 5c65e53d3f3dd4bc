"""Teacher-guided label assignment: Ultralytics' task-aligned assigner ranks the teacher's predictions."""

from __future__ import annotations

from typing import Any

import torch
from ultralytics.utils.tal import dist2bbox, make_anchors


class TeacherGuidedAssigner:
    """Stands in for a detection loss's task-aligned assigner and lets it rank a teacher-student blend.

    Ultralytics' ``TaskAlignedAssigner`` picks each object's positive anchors, and the soft class targets at them
    (IoU-aligned scores), from the student's own predicted scores and boxes. A student trained from scratch predicts
    noise for many epochs, so its positives are poorly placed and its class targets small. Label assignment
    distillation (LAD; Nguyen et al., WACV 2022) lets the teacher's predictions do the assignment instead. Here the
    assigner sees ``share * teacher + (1 - share) * student`` (probabilities and pixel boxes); the detection losses
    are still computed on the student's own predictions, and targets still come from the ground truth.

    It exists only for the duration of one detection-loss call (see ``compat.guided_assignment``), so no teacher tensor
    outlives the step.

    Args:
        assigner: The wrapped ``TaskAlignedAssigner``; every attribute not defined here is read from it.
        share: Weight of the teacher's predictions in [0, 1], a float or a 0-d tensor.
        teacher: ``(scores (B, A, C) probabilities, boxes (B, A, 4) xyxy pixels)``, see ``teacher_predictions``.
    """

    def __init__(self, assigner: Any, share: float | torch.Tensor, teacher: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.assigner = assigner
        self.share = share
        self.teacher = teacher

    def __getattr__(self, name: str) -> Any:  # topk, num_classes, ... of the wrapped assigner
        if name == "assigner":  # not set yet (unpickling): do not recurse
            raise AttributeError(name)
        return getattr(self.assigner, name)

    def __call__(
        self, pd_scores: torch.Tensor, pd_bboxes: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, ...]:
        """The wrapped assigner's output for ``share * teacher + (1 - share) * student`` predictions.

        Args:
            pd_scores: The student's scores (B, A, C), probabilities.
            pd_bboxes: The student's boxes (B, A, 4), xyxy pixels.
            *args: The rest of the assigner's arguments (anchors, ground truth), unchanged.
            **kwargs: Likewise.

        Returns:
            What the wrapped assigner returns.
        """
        t_scores, t_boxes = self.teacher
        share = torch.as_tensor(self.share, device=pd_scores.device)
        pd_scores = torch.lerp(pd_scores, t_scores.to(pd_scores.dtype), share.to(pd_scores.dtype))
        pd_bboxes = torch.lerp(pd_bboxes, t_boxes.to(pd_bboxes.dtype), share.to(pd_bboxes.dtype))
        return self.assigner(pd_scores, pd_bboxes, *args, **kwargs)


def dense_loss(base: Any) -> Any | None:
    """The detection loss inside ``base`` that assigns the dense (one-to-many) predictions, or None if it has none.

    v5u/v8/v9/11 criteria assign directly; end-to-end criteria (YOLO26, v10) hold one per branch, and only the
    dense one2many branch is assigned the way the teacher's dense outputs describe.

    Args:
        base: Ultralytics' detection criterion.

    Returns:
        The loss holding the task-aligned ``assigner``, or None.
    """
    for loss in (base, getattr(base, "one2many", None)):
        if loss is not None and hasattr(loss, "assigner") and hasattr(loss, "loss"):
            return loss
    return None


@torch.no_grad()
def teacher_predictions(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    feats: list[torch.Tensor],
    stride: torch.Tensor,
    reg_max: int,
    student_scores: torch.Tensor,
    class_index: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the teacher's raw head outputs into what the assigner ranks, in the student's classes.

    Args:
        scores: Teacher class logits (B, Ct, A).
        boxes: Teacher box outputs (B, 4 * reg_max, A): DFL bins per side, or plain distances when reg_max is 1.
        feats: Head input maps (any network's: only their sizes are read) giving the anchor grid.
        stride: Strides of the head levels.
        reg_max: The teacher's DFL bins per side.
        student_scores: Student class logits (B, Cs, A); classes the teacher lacks keep the student's own score.
        class_index: (student classes, teacher classes) that correspond; None when the classes coincide.

    Returns:
        Scores (B, A, Cs) as probabilities and boxes (B, A, 4) as xyxy pixels, the assigner's input layout.
    """
    prob = scores.sigmoid()
    if class_index is not None:
        prob = student_scores.detach().float().sigmoid().index_copy_(1, class_index[0], prob[:, class_index[1]])
    b, _, a = boxes.shape
    if reg_max > 1:  # expected distance per side: softmax over the bins, weighted by bin index
        bins = torch.arange(reg_max, device=boxes.device, dtype=boxes.dtype).view(1, 1, reg_max, 1)
        dist = (boxes.view(b, 4, reg_max, a).softmax(2) * bins).sum(2)
    else:
        dist = boxes
    anchors, strides = make_anchors(feats, stride, 0.5)
    xyxy = dist2bbox(dist.transpose(1, 2), anchors, xywh=False) * strides
    return prob.transpose(1, 2), xyxy

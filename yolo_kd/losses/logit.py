"""Class-logit distillation for YOLO's sigmoid (multi-label) classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (B, A) over anchors and images, weighted by ``weight`` (B, A) if given.

    Dividing by the weight sum (not by B or A) keeps a gain's meaning fixed across batch sizes and image sizes.
    """
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp(min=1e-6)


class SigmoidLogitKD(nn.Module):
    """Per-class binary KL between teacher and student sigmoid scores at every anchor.

    YOLOv8-style heads score each class with an independent sigmoid, so the soft target of Hinton et al. (2015) is
    a Bernoulli per class rather than one softmax: ``KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T))) * T**2``, summed
    over classes. It is zero exactly when the logits agree, and its gradient ``T * (sigmoid(s/T) - sigmoid(t/T))``
    pushes the student toward the teacher at every anchor, background included (teacher's low scores suppress the
    student's false positives).

    Args:
        temperature: T; logits are divided by it and the loss is multiplied by T**2 so gradients keep their scale.

    Shapes:
        student, teacher: (B, C, A) raw class logits over A anchor points. weight: (B, A) or None.

    Returns:
        Scalar: sum over classes, weighted mean over anchors and images (see ``weighted_mean``).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Per-class binary KL summed over classes, weighted mean over anchors (see the class docstring)."""
        t = self.temperature
        s_logit = student.float() / t
        t_logit = teacher.detach().float() / t
        p_t = t_logit.sigmoid()
        # BCE(s, p_t) - BCE(t, p_t) = KL(p_t || p_s); both terms in logit form stay finite for saturated scores
        kl = F.binary_cross_entropy_with_logits(s_logit, p_t, reduction="none") - F.binary_cross_entropy_with_logits(
            t_logit, p_t, reduction="none"
        )
        per_anchor = kl.sum(1) * (t * t)  # (B, A)
        return weighted_mean(per_anchor, weight)

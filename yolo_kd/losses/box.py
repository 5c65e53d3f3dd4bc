"""Box-distribution (localization) distillation on the DFL bins."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .logit import weighted_mean


class DistributionKD(nn.Module):
    """Localization distillation (Zheng et al., CVPR 2022) on YOLO's DFL box distributions.

    Each anchor predicts, for each of its 4 box sides, a discrete distribution over ``reg_max`` distance bins.
    The loss is ``KL(softmax(t/T) || softmax(s/T)) * T**2`` per side, averaged over the 4 sides.

    Args:
        temperature: T; softens both distributions, loss scaled by T**2.

    Shapes:
        student, teacher: (B, 4 * R, A) raw bin logits, R bins per side (read from the shape; both must share it).
        weight: (B, A) or None.

    Returns:
        Scalar: mean over sides, weighted mean over anchors and images.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """KL of the per-side bin distributions, times T**2 (see the class docstring)."""
        b, c, a = student.shape
        t = self.temperature
        s_log = F.log_softmax(student.float().view(b, 4, c // 4, a) / t, dim=2)
        t_log = F.log_softmax(teacher.detach().float().view(b, 4, c // 4, a) / t, dim=2)
        kl = (t_log.exp() * (t_log - s_log)).sum(2)  # (B, 4, A)
        return weighted_mean(kl.mean(1) * (t * t), weight)

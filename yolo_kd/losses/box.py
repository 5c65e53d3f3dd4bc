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
        reg_max: Number of bins per side (teacher and student must share it).
        temperature: T; softens both distributions, loss scaled by T**2.

    Shapes:
        student, teacher: (B, 4 * reg_max, A) raw bin logits. weight: (B, A) or None.

    Returns:
        Scalar: mean over sides, weighted mean over anchors and images.
    """

    def __init__(self, reg_max: int = 16, temperature: float = 1.0) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        b, _, a = student.shape
        t = self.temperature
        s_log = F.log_softmax(student.float().view(b, 4, self.reg_max, a) / t, dim=2)
        t_log = F.log_softmax(teacher.detach().float().view(b, 4, self.reg_max, a) / t, dim=2)
        kl = (t_log.exp() * (t_log - s_log)).sum(2)  # (B, 4, A)
        return weighted_mean(kl.mean(1) * (t * t), weight)

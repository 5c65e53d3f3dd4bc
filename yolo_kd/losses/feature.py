"""Feature-map distillation on the neck maps that feed the Detect head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelWiseKD(nn.Module):
    """Channel-wise distillation (CWD; Shu et al., ICCV 2021).

    Each channel's activation map is turned into a spatial distribution by a softmax over its H*W locations; the
    student is pulled toward the teacher's distribution with ``KL(teacher || student) * T**2``. Only where each
    channel fires matters, not its magnitude, so teachers with larger activations need no rescaling.

    Args:
        temperature: T of the spatial softmax.

    Shapes:
        student, teacher: (N, C, H, W), student already projected to the teacher's C.

    Returns:
        Scalar: KL summed over locations, mean over images and channels.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """KL(teacher || student) of the spatial softmaxes, times T**2 (see the class docstring)."""
        n, c, h, w = student.shape
        t = self.temperature
        s_log = F.log_softmax(student.float().reshape(n * c, h * w) / t, dim=1)
        t_log = F.log_softmax(teacher.detach().float().reshape(n * c, h * w) / t, dim=1)
        return (t_log.exp() * (t_log - s_log)).sum(1).mean() * (t * t)


class MaskedGenerativeKD(nn.Module):
    """The loss of masked generative distillation (MGD; Yang et al., ECCV 2022): generated vs teacher map.

    MGD masks a share of the student's pixels and has a small generator regenerate the teacher's map from the rest;
    as in mmrazor, the masking and the generator are a connector (``yolo_kd.connectors.MGDGenerator``) and the loss
    compares its output with the teacher map.

    Shapes:
        student: (N, C, H, W), the generator's output. teacher: (N, C, H, W).

    Returns:
        Scalar: squared error, mean over all elements.
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean squared error between the generated and the teacher map."""
        return F.mse_loss(student.float(), teacher.detach().float())

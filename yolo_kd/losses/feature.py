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
        channels: Teacher channels at this level (unused; kept so every feature loss is built the same way).
        temperature: T of the spatial softmax.

    Shapes:
        student, teacher: (N, C, H, W), student already projected to the teacher's C.

    Returns:
        Scalar: KL summed over locations, mean over images and channels.
    """

    def __init__(self, channels: int, temperature: float = 1.0, **_: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        n, c, h, w = student.shape
        t = self.temperature
        s_log = F.log_softmax(student.float().reshape(n * c, h * w) / t, dim=1)
        t_log = F.log_softmax(teacher.detach().float().reshape(n * c, h * w) / t, dim=1)
        return (t_log.exp() * (t_log - s_log)).sum(1).mean() * (t * t)


class MaskedGenerativeKD(nn.Module):
    """Masked generative distillation (MGD; Yang et al., ECCV 2022).

    A random share of the student's (projected) feature pixels is zeroed and a small generator (3x3 conv, ReLU,
    3x3 conv) must regenerate the teacher's full map from what is left, which forces the student's features to carry
    its neighbours' information. The generator is trained with the student and never saved with it.

    Args:
        channels: Teacher channels at this level.
        mask_ratio: Share of pixels masked (0 disables masking, giving plain generated-feature MSE).

    Shapes:
        student, teacher: (N, C, H, W), student already projected to the teacher's C.

    Returns:
        Scalar: squared error, mean over all elements.
    """

    def __init__(self, channels: int, mask_ratio: float = 0.5, **_: float) -> None:
        super().__init__()
        self.mask_ratio = mask_ratio
        self.generator = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        n, _, h, w = student.shape
        if self.training and self.mask_ratio > 0:
            keep = torch.rand(n, 1, h, w, device=student.device) >= self.mask_ratio
            student = student * keep
        return F.mse_loss(self.generator(student.float()), teacher.detach().float())

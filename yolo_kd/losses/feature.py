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


class PearsonKD(nn.Module):
    """Pearson-correlation feature distillation (PKD; Cao et al., NeurIPS 2022).

    Each channel is standardised over the batch's images and locations (zero mean, unit variance over N*H*W, as in
    the paper), student and teacher alike, and the loss is half the mean squared difference of the standardised maps:
    one minus the Pearson correlation of each channel's activations, averaged over channels. Offsets and scales of
    either network drop out, so a teacher of another depth or width needs no rescaling, only a connector to its
    channel count. Standardising over the batch, not per image, keeps the small maps of the deepest level (2x2 at
    64 px) from inflating a nearly flat channel into a unit-variance target.

    Shapes:
        student, teacher: (N, C, H, W), student already projected to the teacher's C.

    Returns:
        Scalar in [0, 2]: 1 - correlation, mean over channels (0 for a channel constant on both sides).
    """

    @staticmethod
    def standardise(x: torch.Tensor) -> torch.Tensor:
        """Zero mean, unit (population) variance per channel over images and locations; a constant channel -> 0."""
        x = x.float()
        x = x - x.mean(dim=(0, 2, 3), keepdim=True)
        return x / (x.pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt() + 1e-6)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Half the mean squared difference of the standardised maps (see the class docstring)."""
        return F.mse_loss(self.standardise(student), self.standardise(teacher.detach())) / 2

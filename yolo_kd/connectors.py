"""Connectors: the trainable modules between a student map and the map its feature loss compares with the teacher's."""

from __future__ import annotations

import torch
from torch import nn


class MGDGenerator(nn.Module):
    """MGD's connector (Yang et al., ECCV 2022; mmrazor's ``MGDConnector``): mask the student map, regenerate.

    In training, a random share of the (projected) student map's pixels is zeroed, and a small generator (3x3 conv,
    ReLU, 3x3 conv) regenerates the teacher's map from what is left, which forces the student's features to carry
    their neighbours' information. In eval mode nothing is masked. It trains with the student and is never saved
    inside it.

    Args:
        channels: Teacher channels at this level (the projected student map has them too).
        mask_ratio: Share of pixels masked in training (0 disables masking).

    Shapes:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, mask_ratio: float = 0.5) -> None:
        super().__init__()
        self.mask_ratio = mask_ratio
        self.generator = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The generated map from the masked student map."""
        n, _, h, w = x.shape
        if self.training and self.mask_ratio > 0:
            keep = torch.rand(n, 1, h, w, device=x.device) >= self.mask_ratio
            x = x * keep
        return self.generator(x.float())

"""Distillation losses. Each is an ``nn.Module`` whose ``forward(student, teacher, ...)`` returns a scalar."""

from .box import DistributionKD
from .feature import ChannelWiseKD, MaskedGenerativeKD
from .logit import SigmoidLogitKD

FEATURE_LOSSES = {"cwd": ChannelWiseKD, "mgd": MaskedGenerativeKD}

__all__ = ["FEATURE_LOSSES", "ChannelWiseKD", "DistributionKD", "MaskedGenerativeKD", "SigmoidLogitKD"]

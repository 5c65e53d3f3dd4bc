"""Distillation losses. Each is an ``nn.Module`` whose ``forward(student, teacher, ...)`` returns a scalar."""

from .box import DistributionKD
from .feature import ChannelWiseKD, MaskedGenerativeKD, PearsonKD
from .logit import SigmoidLogitKD

# kd_feat_loss name -> feature loss: the one list of the names (config validates kd_feat_loss against it)
FEATURE_LOSSES = {"cwd": ChannelWiseKD, "mgd": MaskedGenerativeKD, "pkd": PearsonKD}

__all__ = ["FEATURE_LOSSES", "ChannelWiseKD", "DistributionKD", "MaskedGenerativeKD", "PearsonKD", "SigmoidLogitKD"]

"""The distiller: connectors and the three KD losses, from student and teacher head outputs to named terms."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import KDConfig
from .connectors import MGDGenerator
from .losses import ChannelWiseKD, DistributionKD, MaskedGenerativeKD, SigmoidLogitKD

KD_TERMS = ("kd_cls", "kd_box", "kd_feat")  # the names of the terms, and of their results.csv columns


def box_kd_reason(cfg: KDConfig, reg_max: int, teacher_reg_max: int) -> str | None:
    """Why box-distribution KD is off for a student/teacher pair.

    Args:
        cfg: The KD settings.
        reg_max: The student's DFL bins per side.
        teacher_reg_max: The teacher's DFL bins per side.

    Returns:
        The reason in words, or None when the box term runs.
    """
    if cfg.kd_box <= 0:
        return "kd_box=0"
    if reg_max <= 1:
        return "the student has no DFL box distribution (reg_max=1)"
    if teacher_reg_max != reg_max:
        return f"teacher reg_max={teacher_reg_max} differs from the student's reg_max={reg_max}"
    return None


class Distiller(nn.Module):
    """Everything that turns student and teacher head outputs into the KD terms, as mmrazor's distillers do.

    Holds one 1x1 connector per head level (student channels -> teacher channels), MGD's generators when the feature
    loss is MGD, and the three losses. Its parameters (the connectors) get their own optimizer group and are stored
    in ``last.pt`` as plain tensors under ``ckpt["kd"]["state"]``, never inside the student.

    Args:
        student_channels: Channels of each student map entering the Detect head.
        teacher_channels: Channels of each teacher map entering the Detect head.
        cfg: Gains, temperatures and the feature loss.

    Example:
        >>> distiller = Distiller([64, 128, 256], [128, 256, 512], KDConfig(kd_feat=1.0))
        >>> terms = distiller(student_outputs, teacher_outputs)  # {"kd_cls": ..., "kd_box": ..., "kd_feat": ...}
    """

    def __init__(self, student_channels: list[int], teacher_channels: list[int], cfg: KDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        feat = cfg.kd_feat > 0
        # Connectors first, then generators: the order parameters are initialised in (and a seeded run reproduces).
        self.connectors = nn.ModuleList(
            nn.Conv2d(cs, ct, kernel_size=1) for cs, ct in zip(student_channels, teacher_channels) if feat
        )
        # MGD's generator is a connector (mask, regenerate the teacher map); its loss compares the generated map
        mgd = cfg.kd_feat_loss == "mgd"
        self.generators = nn.ModuleList(MGDGenerator(ct, cfg.kd_mgd_mask) for ct in teacher_channels if feat and mgd)
        self.logit = SigmoidLogitKD(cfg.kd_cls_temp)
        self.box = DistributionKD(cfg.kd_box_temp)
        self.feature = MaskedGenerativeKD() if mgd else ChannelWiseKD(cfg.kd_feat_temp)

    def forward(self, student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The gain-scaled KD terms of one batch.

        Args:
            student: ``scores`` (B, C, A) class logits, ``boxes`` (B, 4 * R, A) DFL bins or None (no box term),
                ``feats`` the maps entering the Detect head.
            teacher: The same keys for the teacher, its classes already matched to the student's (same C).

        Returns:
            ``{"kd_cls", "kd_box", "kd_feat"}``: fp32 scalars, each multiplied by its gain; 0 for a term whose gain is
            0 (not computed).
        """
        cfg = self.cfg
        s_scores, t_scores = student["scores"], teacher["scores"]
        zero = s_scores.new_zeros((), dtype=torch.float32)
        # Anchors the teacher is confident about (any class) weigh more; background anchors still count a little.
        weight = t_scores.sigmoid().amax(1)
        if cfg.kd_weight_power != 1.0:
            weight = weight.pow(cfg.kd_weight_power)
        kd_cls = cfg.kd_cls * self.logit(s_scores, t_scores, weight) if cfg.kd_cls > 0 else zero
        boxes = student["boxes"] is not None and teacher["boxes"] is not None
        kd_box = cfg.kd_box * self.box(student["boxes"], teacher["boxes"], weight) if boxes and cfg.kd_box > 0 else zero
        kd_feat = cfg.kd_feat * self.feature_loss(student["feats"], teacher["feats"]) if cfg.kd_feat > 0 else zero
        return dict(zip(KD_TERMS, (kd_cls, kd_box, kd_feat)))

    def feature_loss(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        """Mean over head levels of the feature loss between connected student maps and teacher maps.

        Args:
            student: The student's maps entering the Detect head, one per level.
            teacher: The teacher's maps, one per level.

        Returns:
            A scalar (not gain-scaled).
        """
        mapped = [conn(s) for conn, s in zip(self.connectors, student)]
        if len(self.generators):
            mapped = [gen(m) for gen, m in zip(self.generators, mapped)]
        return torch.stack([self.feature(m, t) for m, t in zip(mapped, teacher)]).mean()

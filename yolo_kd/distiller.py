"""The distiller: connectors and the KD losses, from student and teacher head outputs to named terms."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import KDConfig, KDConfigError
from .connectors import MGDGenerator
from .losses import FEATURE_LOSSES, ChannelWiseKD, DistributionKD, SigmoidLogitKD

KD_TERMS = ("kd_cls", "kd_box", "kd_feat", "kd_cross")  # the names of the terms, and of their results.csv columns
MAX_GRAD_NORM = 10.0  # the norm Ultralytics' optimizer_step clips the student's gradients to


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
    loss is MGD, another 1x1 connector per level for cross-head KD, and the losses. Its parameters (the connectors)
    get their own optimizer group and are stored in ``last.pt`` as plain tensors under ``ckpt["kd"]["state"]``,
    never inside the student.

    Args:
        student_channels: Channels of each student map entering the Detect head.
        teacher_channels: Channels of each teacher map entering the Detect head.
        cfg: Gains, temperatures and the feature loss.

    Example:
        >>> distiller = Distiller([64, 128, 256], [128, 256, 512], KDConfig(kd_feat=1.0))
        >>> terms = distiller(student_outputs, teacher_outputs)  # {"kd_cls": ..., "kd_box": ..., ...}
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
        # cross-head KD's connectors come last, so the runs without it initialise exactly as before
        cross = cfg.kd_cross > 0
        if cross and len(student_channels) != len(teacher_channels):
            raise KDConfigError(
                f"kd_cross: the student's head has {len(student_channels)} levels, the teacher's "
                f"{len(teacher_channels)}; cross-head KD runs the teacher's head on the student's maps, level by level"
            )
        self.cross_connectors = nn.ModuleList(
            nn.Conv2d(cs, ct, kernel_size=1) for cs, ct in zip(student_channels, teacher_channels) if cross
        )
        self.logit = SigmoidLogitKD(cfg.kd_cls_temp)
        self.box = DistributionKD(cfg.kd_box_temp)
        loss = FEATURE_LOSSES[cfg.kd_feat_loss]
        self.feature = loss(cfg.kd_feat_temp) if loss is ChannelWiseKD else loss()  # only CWD has a temperature

    def forward(self, student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The gain-scaled KD terms of one batch.

        Args:
            student: ``scores`` (B, C, A) class logits, ``boxes`` (B, 4 * R, A) DFL bins or None (no box term),
                ``feats`` the maps entering the Detect head.
            teacher: The same keys for the teacher, its classes already matched to the student's (same C); with
                ``kd_cross``, also ``head``: maps -> ``{"scores", "boxes"}``, the teacher's head with the same class
                matching (``FrozenTeacher.head_outputs``).

        Returns:
            ``{"kd_cls", "kd_box", "kd_feat", "kd_cross"}``: fp32 scalars, each multiplied by its gain; 0 for a term
            whose gain is 0 (not computed).
        """
        cfg = self.cfg
        s_scores, t_scores = student["scores"], teacher["scores"]
        zero = s_scores.new_zeros((), dtype=torch.float32)
        # Anchors the teacher is confident about (any class) weigh more; background anchors still count a little.
        weight = t_scores.detach().sigmoid().amax(1)  # a target, never trained
        if cfg.kd_weight_power != 1.0:
            weight = weight.pow(cfg.kd_weight_power)
        kd_cls = cfg.kd_cls * self.logit(s_scores, t_scores, weight) if cfg.kd_cls > 0 else zero
        boxes = student["boxes"] is not None and teacher["boxes"] is not None
        kd_box = cfg.kd_box * self.box(student["boxes"], teacher["boxes"], weight) if boxes and cfg.kd_box > 0 else zero
        kd_feat = cfg.kd_feat * self.feature_loss(student["feats"], teacher["feats"]) if cfg.kd_feat > 0 else zero
        kd_cross = cfg.kd_cross * self.cross_head_loss(student["feats"], teacher, weight) if cfg.kd_cross > 0 else zero
        return dict(zip(KD_TERMS, (kd_cls, kd_box, kd_feat, kd_cross)))

    def cross_head_loss(self, feats: list[torch.Tensor], teacher: dict[str, Any], weight: torch.Tensor) -> torch.Tensor:
        """CrossKD (Wang et al., CVPR 2024): the teacher's head on the connected student maps, against the teacher.

        The student's own head is left to the ground truth: the KD targets, which may disagree with it, reach the
        student only through its neck and backbone, by way of the frozen teacher head.

        Args:
            feats: The student's maps entering its Detect head, one per level.
            teacher: The teacher's ``scores``, ``boxes`` (None: no box part) and ``head`` (see ``forward``).
            weight: Anchor weights (B, A), the teacher's confidence.

        Returns:
            Logit KD plus box-distribution KD of the cross-head outputs, a scalar (not gain-scaled).
        """
        cross = teacher["head"]([conn(f) for conn, f in zip(self.cross_connectors, feats)])
        loss = self.logit(cross["scores"], teacher["scores"], weight)
        if teacher["boxes"] is not None:  # the teacher's own bins on both sides: any student reg_max works
            loss = loss + self.box(cross["boxes"], teacher["boxes"], weight)
        return loss

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


def add_connector_group(optimizer: torch.optim.Optimizer, distiller: Distiller | None, lr: float) -> None:
    """Give the connectors their own optimizer group: no weight decay, otherwise scheduled like group 0.

    Args:
        optimizer: Ultralytics' optimizer for the student, changed in place.
        distiller: The distiller; nothing is added without it or without trainable parameters.
        lr: The initial learning rate (Ultralytics' ``lr0``). Not group 0's: MuSGD boosts some groups (3x lr),
            which the connectors must not inherit.
    """
    params = [p for p in distiller.parameters() if p.requires_grad] if distiller is not None else []
    if params:
        base = {k: v for k, v in optimizer.param_groups[0].items() if k not in {"params", "param_group"}}
        optimizer.add_param_group({**base, "params": params, "weight_decay": 0.0, "param_group": "kd", "lr": lr})


def clip_connector_gradients(distiller: Distiller | None, scaler: torch.amp.GradScaler | None = None) -> None:
    """Clip the connectors' gradients to the norm Ultralytics clips the student's gradients to (it clips only those).

    Ultralytics' ``optimizer_step`` unscales AMP's loss scale and then clips ``model.parameters()``: the connectors,
    outside the student, would step unclipped, and a spike of the feature loss (MGD regresses raw teacher activations)
    would move them freely. This runs before that step, on gradients still multiplied by the loss scale, so the bound
    is scaled alike (clipping ``g * s`` to ``10 * s`` is clipping ``g`` to 10). Non-finite gradients stay non-finite,
    so AMP's scaler still skips the step.

    Args:
        distiller: The distiller; nothing happens without it or without gradients.
        scaler: Ultralytics' AMP scaler (its scale is 1.0 when AMP is off), or None: unscaled gradients.
    """
    params = [p for p in distiller.parameters() if p.grad is not None] if distiller is not None else []
    if params:  # read the scale only then: on CUDA it costs a sync, and most runs have no connectors
        scale = scaler.get_scale() if scaler is not None else 1.0
        torch.nn.utils.clip_grad_norm_(params, max_norm=MAX_GRAD_NORM * scale)

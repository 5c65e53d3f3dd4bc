"""The criterion that adds the distillation terms to Ultralytics' detection loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .assign import TeacherGuidedAssigner, dense_loss, teacher_predictions
from .config import KDConfig, KDConfigError
from .hooks import DetectTap
from .losses import FEATURE_LOSSES, DistributionKD, SigmoidLogitKD
from .teacher import FrozenTeacher

KD_TERMS = ("kd_cls", "kd_box", "kd_feat")


@torch.no_grad()
def probe_head_channels(model: nn.Module) -> list[int]:
    """Channels of each map entering the model's Detect head, read from one tiny forward pass in eval mode."""
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    size = int(max(model.stride)) * 2
    ch = model.yaml.get("channels", 3) if isinstance(getattr(model, "yaml", None), dict) else 3
    try:
        with DetectTap(model) as tap:
            model(torch.zeros(1, ch, size, size, device=p.device, dtype=p.dtype))
            return [f.shape[1] for f in tap.pop()]
    finally:
        model.train(was_training)


class KDModules(nn.Module):
    """Everything that trains alongside the student for distillation and is never saved inside it.

    Holds one 1x1 connector per head level (student channels -> teacher channels) and the feature loss of each level
    (MGD's generators are trainable). Its parameters get their own optimizer group; its state is stored in ``last.pt``
    as plain tensors under ``ckpt["kd"]["state"]`` so a resumed run continues with the same connectors.
    """

    def __init__(self, student_channels: list[int], teacher_channels: list[int], cfg: KDConfig) -> None:
        super().__init__()
        enabled = cfg.kd_feat > 0
        self.connectors = nn.ModuleList(
            nn.Conv2d(cs, ct, kernel_size=1) for cs, ct in zip(student_channels, teacher_channels) if enabled
        )
        loss_cls = FEATURE_LOSSES[cfg.kd_feat_loss]
        self.feature_losses = nn.ModuleList(
            loss_cls(ct, temperature=cfg.kd_feat_temp, mask_ratio=cfg.kd_mgd_mask) for ct in teacher_channels if enabled
        )

    def feature_loss(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        """Mean over levels of each level's feature loss between projected student maps and teacher maps."""
        terms = [loss(conn(s), t) for conn, loss, s, t in zip(self.connectors, self.feature_losses, student, teacher)]
        return torch.stack(terms).mean()


class KDLoss:
    """Ultralytics' detection criterion plus class-logit, box-distribution and feature distillation.

    Called like the criterion it wraps, ``(preds, batch) -> (loss, loss_items)``. ``loss`` is the detection loss
    vector followed by ``kd_cls``, ``kd_box`` and ``kd_feat``, each already multiplied by its gain and by the batch
    size exactly as Ultralytics scales box/cls/dfl, and ``loss_items`` gains the three names, which become columns of
    ``results.csv`` and of the progress bar. The teacher runs once per call, on the same preprocessed batch.

    It is set as the training model's ``criterion`` attribute, a plain attribute, so the teacher and connectors are
    never in the student's ``parameters()`` or ``state_dict()``. ``copy.deepcopy`` (the EMA, checkpoint snapshots)
    yields ``None`` for it: a copy of the student falls back to the plain Ultralytics criterion and never carries the
    teacher.
    """

    def __init__(
        self,
        base: Any,
        teacher: FrozenTeacher,
        modules: KDModules,
        cfg: KDConfig,
        reg_max: int,
        class_pairs: list[tuple[int, int]] | None = None,
        unlabeled_files: set[str] | None = None,
    ) -> None:
        """``class_pairs`` lists (student class, teacher class) pairs; None means the same classes in the same order."""
        self.base = base
        self.teacher = teacher
        self.modules = modules
        self.cfg = cfg
        self.logit = SigmoidLogitKD(cfg.kd_cls_temp)
        self.dropped_steps = torch.zeros((), dtype=torch.int64, device=teacher.device)
        self.unlabeled_files = unlabeled_files or set()
        self.pseudo_boxes = 0  # pseudo-labels given so far
        self.schedule = 1.0  # the epoch's share of the KD gains (kd_final), set by the trainer each epoch
        self._prefetched: tuple[torch.Tensor, dict[str, Any]] | None = None  # (images, teacher outputs), see prefetch
        # True while mosaic/mixup/cutmix run: a mixed sample may hold unlabelled tiles under a labelled lead image
        self.pseudo_every_sample = False
        # teacher class -> student class for pseudo-labels (-1: the student has no such class)
        pairs = class_pairs if class_pairs is not None else [(i, i) for i in range(teacher.nc)]
        self.teacher_to_student = torch.full((teacher.nc,), -1, dtype=torch.long, device=teacher.device)
        for s_cls, t_cls in pairs:
            self.teacher_to_student[t_cls] = s_cls
        self.box = DistributionKD(reg_max, cfg.kd_box_temp) if box_kd_reason(cfg, reg_max, teacher) is None else None
        # (student, teacher) class index tensors; None (the classes coincide index for index) needs no gather.
        self.class_index = None
        if class_pairs is not None:
            s_idx, t_idx = zip(*class_pairs)
            self.class_index = (torch.tensor(s_idx, device=teacher.device), torch.tensor(t_idx, device=teacher.device))
        self.assigner = None
        if cfg.kd_assign > 0:
            dense = dense_loss(base)
            if dense is None:
                raise KDConfigError(f"kd_assign: {type(base).__name__} has no task-aligned assigner to guide")
            self.assigner = dense.assigner = TeacherGuidedAssigner(dense.assigner, cfg.kd_assign)
            self.stride = dense.stride  # the student's anchor grid, as the criterion builds it

    def pop_dropped_steps(self) -> int:
        """How many steps since the last call had their KD contribution dropped as non-finite (one host sync)."""
        n = int(self.dropped_steps.item())
        self.dropped_steps.zero_()
        return n

    def __deepcopy__(self, memo: dict) -> None:
        return None

    def update(self) -> None:
        """Per-epoch update of the wrapped criterion (end-to-end heads re-balance their branches)."""
        if hasattr(self.base, "update"):
            self.base.update()

    def prefetch(self, images: torch.Tensor) -> None:
        """Run the teacher on a batch before the student's forward pass; the next call on the same images uses it.

        The trainer calls this right after preprocessing. Inside the loss, the teacher pass would run between the
        student's forward and backward passes and push the student's saved activations out of the CPU caches; before
        the forward, only the teacher's outputs wait (its head outputs, plus the neck maps when the feature term is
        on), and its activations are already freed (measured in docs/BENCHMARKS.md). Either way the teacher runs
        exactly once per step, and the outputs are dropped by the call that consumes them.
        """
        self._prefetched = None  # an unconsumed pass (a failed step) must not stay alive beside the new one
        self._prefetched = (images, self.teacher(images))

    def __call__(self, preds: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pre, self._prefetched = self._prefetched, None
        teacher = pre[1] if pre is not None and pre[0] is batch["img"] else self.teacher(batch["img"])
        # A non-finite teacher output or KD term must not reach the student. Checking it on the host would stall every
        # step, so it is handled on the device: teacher outputs are made finite before use (finite inputs keep every
        # gradient finite), and the batch's KD contribution is multiplied by 0 when anything was non-finite.
        # One sum per tensor is non-finite iff an element is (or the sum overflows: then the step is dropped too),
        # and the in-place repair allocates nothing: together ~10x cheaper than isfinite().all() plus nan_to_num
        # copies, which cost ~5% of a v8s->v8n step on CPU. The teacher's outputs are fresh and used only here.
        outputs = [teacher["boxes"], teacher["scores"], *teacher["feats"]]
        finite = torch.isfinite(torch.stack([t.sum(dtype=torch.float32) for t in outputs])).all()
        for t in outputs:
            torch.nan_to_num_(t, 0.0, 0.0, 0.0)
        if self.unlabeled_files and self.cfg.kd_pseudo:
            batch = self.pseudo_label(batch, teacher["pred"])
        student = self.base.parse_output(preds) if hasattr(self.base, "parse_output") else preds
        if "scores" not in student:  # end-to-end heads: distil the dense one2many branch
            student = student["one2many"]
        if self.assigner is not None:
            # kd_final fades the teacher's say here too; a non-finite teacher has none (the repaired outputs are zeros)
            self.assigner.share = finite.to(torch.float32) * (self.cfg.kd_assign * self.schedule)
            self.assigner.teacher = teacher_predictions(
                teacher["scores"],
                teacher["boxes"],
                student["feats"],
                self.stride,
                self.teacher.reg_max,
                student["scores"],
                self.class_index,
            )
        try:
            loss, items = self.base(preds, batch)
        finally:
            if self.assigner is not None:
                self.assigner.teacher = None
        kd = self.terms(student, teacher)
        finite = finite & torch.isfinite(kd).all()
        kd = torch.where(finite, kd, torch.zeros_like(kd))
        self.dropped_steps += (~finite).to(self.dropped_steps.dtype)  # read once per epoch, not per step
        batch_size = student["scores"].shape[0]
        items = dict(items)
        items.update(zip(KD_TERMS, kd.detach()))
        return torch.cat([loss.view(-1), kd.to(loss.dtype) * batch_size]), items

    def pseudo_label(self, batch: dict[str, Any], pred: torch.Tensor) -> dict[str, Any]:
        """Add the teacher's confident boxes as targets on the batch's unlabelled images.

        An unlabelled image keeps whatever ground truth it carries (mosaic tiles cut from labelled images) and gains
        every teacher box, after NMS, above ``kd_pseudo_conf`` that no ground-truth box already covers (IoU < 0.5).
        Labelled images are left as they are, unless ``pseudo_every_sample`` is set (mixing augmentations on): then
        every sample is treated so, since its tiles may come from unlabelled images. This runs a per-image loop and
        NMS (host syncs), only in this mode.
        """
        from ultralytics.utils.metrics import box_iou
        from ultralytics.utils.nms import non_max_suppression
        from ultralytics.utils.ops import xywh2xyxy, xyxy2xywh

        flags = [self.pseudo_every_sample or f in self.unlabeled_files for f in batch["im_file"]]
        if not any(flags):
            return batch
        h, w = batch["img"].shape[2:]
        scale = torch.tensor([w, h, w, h], device=pred.device, dtype=torch.float32)
        dets = non_max_suppression(pred.float(), conf_thres=self.cfg.kd_pseudo_conf, iou_thres=0.7, max_det=300)
        idx, cls, boxes = [batch["batch_idx"]], [batch["cls"]], [batch["bboxes"]]
        for i, flag in enumerate(flags):
            if not flag or not len(dets[i]):
                continue
            d = dets[i]
            s_cls = self.teacher_to_student[d[:, 5].long()]
            d, s_cls = d[s_cls >= 0], s_cls[s_cls >= 0]
            gt = xywh2xyxy(batch["bboxes"][batch["batch_idx"] == i].to(scale.device) * scale)
            if len(gt) and len(d):
                keep = box_iou(d[:, :4], gt).amax(1) < 0.5
                d, s_cls = d[keep], s_cls[keep]
            if not len(d):
                continue
            idx.append(torch.full((len(d),), float(i), device=batch["batch_idx"].device))
            cls.append(s_cls.view(-1, 1).to(batch["cls"]))
            boxes.append((xyxy2xywh(d[:, :4]) / scale).clamp(0, 1).to(batch["bboxes"]))
            self.pseudo_boxes += len(d)
        if len(idx) == 1:
            return batch
        # Ultralytics' target padding expects each image's targets to be contiguous: sort by image, stably
        batch_idx = torch.cat(idx)
        order = torch.sort(batch_idx, stable=True).indices
        return {**batch, "batch_idx": batch_idx[order], "cls": torch.cat(cls)[order], "bboxes": torch.cat(boxes)[order]}

    def terms(self, student: dict[str, Any], teacher: dict[str, Any]) -> torch.Tensor:
        """The three gain-scaled KD terms ``[kd_cls, kd_box, kd_feat]`` for one batch, as a (3,) tensor."""
        cfg = self.cfg
        s_scores, t_scores = student["scores"], teacher["scores"]
        if self.class_index is not None:  # only classes both know; teacher-only classes are left out
            s_scores, t_scores = (
                s_scores.index_select(1, self.class_index[0]),
                t_scores.index_select(1, self.class_index[1]),
            )
        zero = s_scores.new_zeros((), dtype=torch.float32)
        weight = t_scores.sigmoid().amax(1)
        if cfg.kd_weight_power != 1.0:
            weight = weight.pow(cfg.kd_weight_power)
        kd_cls = cfg.kd_cls * self.logit(s_scores, t_scores, weight) if cfg.kd_cls > 0 else zero
        kd_box = cfg.kd_box * self.box(student["boxes"], teacher["boxes"], weight) if self.box is not None else zero
        kd_feat = (
            cfg.kd_feat * self.modules.feature_loss(student["feats"], teacher["feats"]) if cfg.kd_feat > 0 else zero
        )
        return torch.stack([kd_cls, kd_box, kd_feat]) * self.schedule


def box_kd_reason(cfg: KDConfig, reg_max: int, teacher: FrozenTeacher) -> str | None:
    """Why box-distribution KD is off for this pair, or None when it runs."""
    if cfg.kd_box <= 0:
        return "kd_box=0"
    if reg_max <= 1:
        return "the student has no DFL box distribution (reg_max=1)"
    if teacher.reg_max != reg_max:
        return f"teacher reg_max={teacher.reg_max} differs from the student's reg_max={reg_max}"
    return None

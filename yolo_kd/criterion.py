"""``KDLoss``: the thin adapter that adds the distiller's terms to Ultralytics' detection criterion."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import checkpoint, report
from .assign import dense_loss, teacher_predictions
from .classes import class_pairs as match_classes
from .classes import is_identity, name_list
from .compat import broadcast_from_rank0, guided_assignment
from .config import KDConfig, KDConfigError
from .distiller import KD_TERMS, Distiller, box_kd_reason
from .hooks import DetectTap
from .teacher import FrozenTeacher


@torch.no_grad()
def probe_head_channels(model: nn.Module) -> list[int]:
    """Channels of each map entering the model's Detect head, read from one tiny forward pass in eval mode.

    Args:
        model: An Ultralytics detection model (its ``stride`` must be set).

    Returns:
        One channel count per head level.
    """
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


@dataclass
class KDParts:
    """What distillation adds beside the student for one run, built once by ``build_kd``.

    Attributes:
        teacher: The frozen teacher.
        distiller: The connectors and KD losses, on the student's device.
        class_pairs: (student class, teacher class) pairs.
        class_map: The same pairs, or None when the classes coincide index for index (no gather needed).
    """

    teacher: FrozenTeacher
    distiller: Distiller
    class_pairs: list[tuple[int, int]]
    class_map: list[tuple[int, int]] | None


def build_kd(
    student: nn.Module,
    teacher_model: nn.Module,
    student_names: list[str],
    cfg: KDConfig,
    device: torch.device,
    teacher_path: str,
    teacher_amp: bool = True,
    distributed: bool = False,
    resume_state: dict[str, Any] | None = None,
) -> KDParts:
    """Match the classes, freeze the teacher and build the distiller beside a student, and log the setup.

    Args:
        student: The student (unwrapped from DDP).
        teacher_model: The teacher's unfused model; ``FrozenTeacher`` fuses it in place and keeps it.
        student_names: The student's class names.
        cfg: The KD settings.
        device: The student's device.
        teacher_path: The teacher checkpoint's path (for the log).
        teacher_amp: Run the teacher in reduced precision on accelerators (``kd_teacher_amp``).
        distributed: A multi-process run: every rank takes rank 0's connectors (ranks are seeded apart).
        resume_state: Connector state saved in the checkpoint a run resumes from.

    Returns:
        The teacher, distiller and class pairs.
    """
    t_names = name_list(teacher_model.names)
    pairs = match_classes(student_names, t_names, cfg.kd_class_map)
    class_map = None if is_identity(pairs, len(student_names), len(t_names)) else pairs
    if class_map is not None:
        report.log_class_map(pairs, student_names, t_names)
    teacher = FrozenTeacher(teacher_model, device, amp=teacher_amp, feats=cfg.kd_feat > 0, cross_head=cfg.kd_cross > 0)
    channels = probe_head_channels(student), probe_head_channels(teacher.model)
    distiller = Distiller(*channels, cfg).to(device)
    if distributed:
        broadcast_from_rank0(distiller)
    if resume_state:
        checkpoint.load_connector_state(distiller, resume_state)
    box_off = box_kd_reason(cfg, student.model[-1].reg_max, teacher.reg_max)
    report.log_setup(cfg, teacher_path, teacher.dtype, device, channels, box_off)
    return KDParts(teacher, distiller, pairs, class_map)


class KDLoss:
    """Ultralytics' detection criterion plus the distiller's terms: the adapter between the two.

    Called like the criterion it wraps, ``(preds, batch) -> (loss, loss_items)``. ``loss`` is the detection loss
    vector followed by the KD terms (``kd_cls``, ``kd_box``, ``kd_feat``, ``kd_cross``), each already multiplied by its
    gain and by the batch size exactly as Ultralytics scales box/cls/dfl, and ``loss_items`` gains their names, which
    become columns of ``results.csv`` and of the progress bar. Around the distiller it does what ties KD to
    Ultralytics: the teacher's pass (``prefetch``), the non-finite guard, the class map, teacher-guided assignment
    and pseudo-labels.

    It is set as the training student's ``criterion`` attribute, a plain attribute, so the teacher and connectors are
    never in the student's ``parameters()`` or ``state_dict()``. The trainer sets it after Ultralytics has made its
    EMA copy of the student, and takes it off around the one later copy (NaN recovery, ``compat.criterion_detached``).

    Args:
        base: Ultralytics' detection criterion of the student.
        teacher: The frozen teacher (``nc``, ``device`` and ``reg_max`` are read from it).
        distiller: The connectors and KD losses (None only in tests of the pseudo-labelling, which never call the loss).
        cfg: The KD settings.
        reg_max: The student's DFL bins per side.
        class_pairs: (student class, teacher class) pairs; None means the same classes in the same order.
        unlabeled_files: Image paths of the unlabeled images mixed into training (pseudo-labeled).

    Attributes:
        schedule (float): This epoch's share of the KD gains, set by ``set_epoch``.
        pseudo_every_sample (bool): Pseudo-label every sample, not only unlabeled images (mixing augmentations on).
        pseudo_boxes (int): Pseudo-labels given so far.
    """

    def __init__(
        self,
        base: Any,
        teacher: FrozenTeacher,
        distiller: Distiller | None,
        cfg: KDConfig,
        reg_max: int,
        class_pairs: list[tuple[int, int]] | None = None,
        unlabeled_files: set[str] | None = None,
    ) -> None:
        self.base = base
        self.teacher = teacher
        self.distiller = distiller
        self.cfg = cfg
        self.box_kd = box_kd_reason(cfg, reg_max, teacher.reg_max) is None
        self.dropped_steps = torch.zeros((), dtype=torch.int64, device=teacher.device)
        self.unlabeled_files = unlabeled_files or set()
        self.pseudo_boxes = 0
        self.schedule = 1.0
        self.pseudo_every_sample = False
        self._prefetched: tuple[torch.Tensor, dict[str, Any]] | None = None  # (images, teacher outputs), see prefetch
        # teacher class -> student class for pseudo-labels (-1: the student has no such class)
        pairs = class_pairs if class_pairs is not None else [(i, i) for i in range(teacher.nc)]
        self.teacher_to_student = torch.full((teacher.nc,), -1, dtype=torch.long, device=teacher.device)
        for s_cls, t_cls in pairs:
            self.teacher_to_student[t_cls] = s_cls
        # (student, teacher) class index tensors; None (the classes coincide index for index) needs no gather.
        self.class_index = None
        if class_pairs is not None:
            s_idx, t_idx = zip(*class_pairs)
            self.class_index = (torch.tensor(s_idx, device=teacher.device), torch.tensor(t_idx, device=teacher.device))
        self.dense = None  # the detection loss whose assigner the teacher guides (kd_assign > 0)
        if cfg.kd_assign > 0:
            self.dense = dense_loss(base)
            if self.dense is None:
                raise KDConfigError(f"kd_assign: {type(base).__name__} has no task-aligned assigner to guide")

    def set_epoch(self, epoch: int, epochs: int, mixing: bool = False, lead: float = 1.0) -> None:
        """Set every quantity that follows the epoch: the KD gains' share and who gets pseudo-labels.

        Args:
            epoch: The epoch about to run, from 0.
            epochs: Epochs in the run. The KD gains (and the teacher's share in assignment) go linearly from 1 at the
                first epoch to ``kd_final`` at the last.
            mixing: Whether mosaic/mixup/cutmix run in this epoch: a mixed sample may hold unlabeled tiles under a
                labeled lead image, so every sample gets pseudo-labels then.
            lead: The share the teacher's lead earns (``kd_lead``, see lead.py), multiplying the schedule's.
        """
        self.schedule = (1.0 + (self.cfg.kd_final - 1.0) * epoch / max(epochs - 1, 1)) * lead
        self.pseudo_every_sample = bool(mixing and self.unlabeled_files)

    def pop_dropped_steps(self) -> int:
        """How many steps since the last call had their KD contribution dropped as non-finite (one host sync).

        Returns:
            The count, reset to 0.
        """
        n = int(self.dropped_steps.item())
        self.dropped_steps.zero_()
        return n

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

        Args:
            images: The preprocessed batch images (B, 3, H, W).
        """
        self._prefetched = None  # an unconsumed pass (a failed step) must not stay alive beside the new one
        if not self.idle:
            self._prefetched = (images, self.teacher(images))

    @property
    def idle(self) -> bool:
        """Whether this epoch needs no teacher: every KD gain scaled to 0 (``kd_final``, ``kd_lead``) and no
        pseudo-labels to give. The step is then Ultralytics' own, at its cost, with the KD columns at 0."""
        return self.schedule == 0 and not self.pseudo_labels

    @property
    def pseudo_labels(self) -> bool:
        """Whether the teacher's boxes become targets on unlabeled images (``unlabeled=`` with ``kd_pseudo``)."""
        return bool(self.unlabeled_files and self.cfg.kd_pseudo)

    def __call__(self, preds: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Detection loss plus KD terms for one batch.

        Args:
            preds: The student's raw head outputs.
            batch: Ultralytics' preprocessed batch.

        Returns:
            The loss vector (detection terms, then the KD terms, scaled by batch size) and the detached items.
        """
        pre, self._prefetched = self._prefetched, None
        if self.idle:
            loss, items = self.base(preds, batch)
            return self.with_kd_terms(loss, items, torch.zeros(len(KD_TERMS), device=loss.device), 1)
        teacher = pre[1] if pre is not None and pre[0] is batch["img"] else self.teacher(batch["img"])
        pseudo = self.pseudo_labels
        finite = guard_non_finite(teacher, with_pred=pseudo)
        if pseudo and finite:  # a non-finite teacher gets no say in the targets (a host sync; this mode has many)
            batch = self.pseudo_label(batch, teacher["pred"])
        student = self.base.parse_output(preds) if hasattr(self.base, "parse_output") else preds
        if "scores" not in student:  # end-to-end heads: distil the dense one2many branch
            student = student["one2many"]
        assignment = nullcontext()
        if self.dense is not None:
            # kd_final fades the teacher's say here too; a non-finite teacher has none (the repaired outputs are zeros)
            share = finite.to(torch.float32) * (self.cfg.kd_assign * self.schedule)
            decoded = teacher_predictions(
                teacher["scores"],
                teacher["boxes"],
                student["feats"],
                self.dense.stride,  # the student's anchor grid, as its criterion builds it
                self.teacher.reg_max,
                student["scores"],
                self.class_index,
            )
            assignment = guided_assignment(self.dense, decoded, share)
        with assignment:
            loss, items = self.base(preds, batch)
        kd = self.terms(student, teacher)
        finite = finite & torch.isfinite(kd).all()
        # A repaired teacher leaves every gradient finite. A term that overflows from finite inputs can still send
        # 0 * inf back: fp16 AMP's gradient scaler then skips the step, elsewhere Ultralytics' NaN recovery restores
        # last.pt once the student's own loss turns non-finite.
        kd = torch.where(finite, kd, torch.zeros_like(kd))
        self.dropped_steps += (~finite).to(self.dropped_steps.dtype)  # read once per epoch, not per step
        return self.with_kd_terms(loss, items, kd, student["scores"].shape[0])

    @staticmethod
    def with_kd_terms(
        loss: torch.Tensor, items: dict[str, torch.Tensor], kd: torch.Tensor, batch_size: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The detection loss and items followed by the KD terms, scaled by batch size as Ultralytics scales its own.

        Args:
            loss: The detection loss vector.
            items: Its detached items.
            kd: The KD terms, (len(KD_TERMS),).
            batch_size: Images in the batch.

        Returns:
            The loss vector and the items, each with the KD terms appended.
        """
        items = dict(items)
        items.update(zip(KD_TERMS, kd.detach()))
        return torch.cat([loss.view(-1), kd.to(loss.dtype) * batch_size]), items

    def terms(self, student: dict[str, Any], teacher: dict[str, Any]) -> torch.Tensor:
        """The KD terms (``KD_TERMS``) for one batch: gain- and schedule-scaled, class-mapped.

        Args:
            student: The student's parsed head outputs (``scores``, ``boxes``, ``feats``).
            teacher: The teacher's outputs (same keys).

        Returns:
            A (len(KD_TERMS),) fp32 tensor.
        """
        s_scores, t_scores = self.matched(student["scores"], 0), self.matched(teacher["scores"], 1)
        box = self.box_kd  # a pair whose DFL bins differ has no box term (cross-head KD compares the teacher's bins)
        t_out = {"scores": t_scores, "boxes": teacher["boxes"] if self.teacher.reg_max > 1 else None}
        if self.cfg.kd_cross > 0:
            t_out["head"] = self.teacher_head
        named = self.distiller(
            {"scores": s_scores, "boxes": student["boxes"] if box else None, "feats": student["feats"]},
            {**t_out, "feats": teacher["feats"]},
        )
        return torch.stack([named[k] for k in KD_TERMS]) * self.schedule

    def teacher_head(self, maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The teacher's head on other maps (cross-head KD), its scores restricted to the classes both know.

        Args:
            maps: One map per level, with the teacher head's channels.

        Returns:
            ``{"scores": (B, C, A), "boxes": (B, 4*R, A)}``, C the matched classes, in the order of ``terms``.
        """
        out = self.teacher.head_outputs(maps)
        out["scores"] = self.matched(out["scores"], 1)
        return out

    def matched(self, scores: torch.Tensor, side: int) -> torch.Tensor:
        """Class scores restricted to the classes both models know, in the class map's order.

        Teacher-only classes are left out of every KD term; with the same classes index for index nothing is gathered.

        Args:
            scores: (B, C, A) class scores of one model.
            side: 0 for the student's scores, 1 for the teacher's.

        Returns:
            (B, M, A) scores, M the matched classes.
        """
        return scores if self.class_index is None else scores.index_select(1, self.class_index[side])

    def pseudo_label(self, batch: dict[str, Any], pred: torch.Tensor) -> dict[str, Any]:
        """Add the teacher's confident boxes as targets on the batch's unlabeled images.

        An unlabeled image keeps whatever ground truth it carries (mosaic tiles cut from labeled images) and gains
        every teacher box, after NMS, above ``kd_pseudo_conf`` that no ground-truth box already covers (IoU < 0.5).
        Labeled images are left as they are, unless ``pseudo_every_sample`` is set (mixing augmentations on): then
        every sample is treated so, since its tiles may come from unlabeled images. This runs a per-image loop and
        NMS (host syncs), only in this mode.

        Args:
            batch: Ultralytics' batch (``im_file``, ``img``, ``batch_idx``, ``cls``, ``bboxes``).
            pred: The teacher's decoded predictions (B, 4 + C, A): pixel xywh, then class scores.

        Returns:
            The batch with the pseudo-labels added, targets sorted by image.
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


def attach_kd_loss(student: nn.Module, kd: KDParts, cfg: KDConfig, unlabeled_files: set[str] | None = None) -> KDLoss:
    """Wrap the student's detection criterion in ``KDLoss`` and make it the student's criterion.

    The trainer calls this after Ultralytics has made its EMA copy of the student, so that copy, the validation model
    and every checkpoint derived from it never hold the teacher.

    Args:
        student: The training student (unwrapped from DDP).
        kd: The run's teacher, distiller and class map (``build_kd``).
        cfg: The KD settings.
        unlabeled_files: The unlabeled images mixed into training.

    Returns:
        The criterion now on the student.
    """
    base = getattr(student, "criterion", None) or student.init_criterion()
    reg_max = student.model[-1].reg_max
    student.criterion = KDLoss(base, kd.teacher, kd.distiller, cfg, reg_max, kd.class_map, unlabeled_files)
    return student.criterion


def kd_loss_of(student: nn.Module) -> KDLoss | None:
    """The student's KD criterion: the one ``attach_kd_loss`` set, or None before that and after training."""
    criterion = getattr(student, "criterion", None)
    return criterion if isinstance(criterion, KDLoss) else None


def guard_non_finite(teacher: dict[str, Any], with_pred: bool = False) -> torch.Tensor:
    """Make the teacher's outputs finite in place, and say on the device whether they already were.

    A non-finite teacher output (an fp16 overflow, say) must not reach the student. Checking it on the host would
    stall every step, so it is handled on the device: outputs are made finite before use (finite inputs keep every
    gradient finite), and the caller multiplies the batch's KD contribution by 0 when they were not. One sum per
    tensor is non-finite iff an element is (or the sum overflows: then the step is dropped too), and the in-place
    repair allocates nothing: together ~10x cheaper than isfinite().all() plus nan_to_num copies, which cost ~5% of a
    v8s->v8n step on CPU. The teacher's outputs are fresh and used only in this step.

    Args:
        teacher: The teacher's outputs (``boxes``, ``scores``, ``feats``, ``pred``), repaired in place.
        with_pred: Guard the decoded predictions too (pseudo-labels read them).

    Returns:
        A 0-d bool tensor: True when every guarded output was finite.
    """
    outputs = [teacher["boxes"], teacher["scores"], *teacher["feats"]]
    if with_pred and teacher.get("pred") is not None:
        outputs.append(teacher["pred"])
    finite = torch.isfinite(torch.stack([t.sum(dtype=torch.float32) for t in outputs])).all()
    for t in outputs:
        torch.nan_to_num_(t, 0.0, 0.0, 0.0)
    return finite

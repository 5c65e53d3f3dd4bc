"""The teacher's measured lead over the student, and the KD gains that follow it (``kd_lead``).

A teacher teaches only while it is better than its student. From scratch with the teacher init, a student can pass
its teacher within the run (measured in docs/BENCHMARKS.md: 64 px, 200 epochs, the student passes a 0.154 teacher near
epoch 100 and the KD terms then hold it near the teacher's level). So the teacher is validated once, before training,
on the student's validation set with the student's classes, and each epoch the KD gains are scaled by the teacher's
lead over the best validation score the student has reached so far: full gains while the teacher leads by at least
``kd_lead``, none once the student has caught up, linear in between.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from ultralytics.models.yolo.detect import DetectionValidator

from . import compat, report
from .teacher import FrozenTeacher

__all__ = ["LeadGate", "lead_share", "measure_lead", "student_class_scores", "teacher_fitness"]


def lead_share(teacher: float, student: float, margin: float) -> float:
    """The share of the KD gains the teacher's lead earns.

    Args:
        teacher: The teacher's validation fitness (Ultralytics' fitness, mAP50-95 for detection).
        student: The student's best validation fitness so far.
        margin: The lead at which the gains are whole; 0 switches the rule off.

    Returns:
        ``min(1, max(0, (teacher - student) / margin))``, or 1.0 with ``margin`` 0.
    """
    if margin <= 0:
        return 1.0
    return min(1.0, max(0.0, (teacher - student) / margin))


def student_class_scores(pred: torch.Tensor, pairs: list[tuple[int, int]], n_student: int) -> torch.Tensor:
    """The teacher's decoded predictions with its class scores re-indexed to the student's classes.

    Args:
        pred: The teacher's decoded predictions (B, 4 + C_teacher, A): boxes, then class scores.
        pairs: (student class, teacher class) pairs.
        n_student: The student's class count.

    Returns:
        (B, 4 + n_student, A): the boxes, then each student class's teacher score (0 for a class without one).
    """
    out = pred.new_zeros(pred.shape[0], 4 + n_student, pred.shape[2])
    out[:, :4] = pred[:, :4]
    if pairs:
        s_idx, t_idx = (torch.tensor(i, device=pred.device) for i in zip(*pairs))
        out[:, 4 + s_idx] = pred[:, 4 + t_idx]
    return out


def teacher_fitness(
    teacher: FrozenTeacher,
    validator: DetectionValidator,
    data: dict[str, Any],
    pairs: list[tuple[int, int]],
    names: dict[int, str],
) -> float | None:
    """Validate the teacher as Ultralytics validates the student during training, on the student's classes.

    Args:
        teacher: The frozen teacher.
        validator: A fresh detection validator of the run (the trainer's ``get_validator()``), with its loader.
        data: The run's dataset dictionary.
        pairs: (student class, teacher class) pairs.
        names: The student's class names by index.

    Returns:
        The teacher's fitness, on the scale of the trainer's ``fitness`` (mAP50-95 for detection); None on DDP ranks
        other than 0, which only hand their shard's matches to rank 0.
    """

    def predict(images: torch.Tensor) -> torch.Tensor:
        return student_class_scores(teacher.predictions(images), pairs, len(names))

    return compat.validation_fitness(validator, predict, data, names, teacher.device)


def measure_lead(
    teacher: FrozenTeacher,
    validator: DetectionValidator,
    data: dict[str, Any],
    pairs: list[tuple[int, int]],
    names: dict[int, str],
    margin: float,
    validates: bool = True,
) -> LeadGate:
    """Validate the teacher (``teacher_fitness``), log its score and return the run's gate.

    Args:
        teacher: The frozen teacher.
        validator: A fresh detection validator of the run, with its loader.
        data: The run's dataset dictionary.
        pairs: (student class, teacher class) pairs.
        names: The student's class names by index.
        margin: ``kd_lead``.
        validates: Whether the run validates the student every epoch (Ultralytics' ``val``).

    Returns:
        The gate; under DDP only rank 0's holds the teacher's score (the others take rank 0's share each epoch).
        Where the two scores cannot be compared, the teacher is not validated and the gate keeps the gains whole.
    """
    missing = [names[i] for i in sorted(set(names) - {s for s, _ in pairs})]
    reason = (
        "the run does not validate the student each epoch (val=False)"
        if not validates
        # those classes' AP would count as 0 for the teacher
        else f"the teacher has no class for {missing}, so its score does not compare with the student's"
        if missing
        else "the teacher is end-to-end without its dense branch (fused away), which its validation needs"
        if not teacher.dense
        else None
    )
    if reason is not None:
        report.warn_lead_off(reason)
        return LeadGate(None, margin)
    start = time.perf_counter()
    fitness = teacher_fitness(teacher, validator, data, pairs, names)
    if fitness is not None:
        report.log_teacher_fitness(fitness, margin, time.perf_counter() - start)
    return LeadGate(fitness, margin)


class LeadGate:
    """``kd_lead`` over one run: the teacher's fitness, measured once, against the student's best so far.

    Args:
        teacher: The teacher's validation fitness, or None where it was not measured (``kd_lead`` off, or a DDP
            worker, which takes rank 0's share).
        margin: ``kd_lead``.

    Attributes:
        last (float): The share given at the last epoch (1.0 before the first).
    """

    def __init__(self, teacher: float | None, margin: float) -> None:
        self.teacher = teacher
        self.margin = margin
        self.last = 1.0

    def epoch_share(self, epoch: int, student_best: float | None, device: torch.device, distributed: bool) -> float:
        """``share`` on rank 0, the same number on every rank of a multi-process run (only rank 0 knows the student's
        best), or 1.0 everywhere without ``kd_lead`` (no collective then).

        Args:
            epoch: The epoch about to run, from 0.
            student_best: The student's best validation fitness so far (None before its first validation).
            device: This rank's device.
            distributed: Whether a process group runs.

        Returns:
            The share in [0, 1].
        """
        share = self.share(epoch, student_best)
        if self.margin > 0 and distributed:
            share = compat.broadcast_float(share, device)
        return share

    def share(self, epoch: int, student_best: float | None) -> float:
        """This epoch's share of the KD gains; logged when it changes.

        Args:
            epoch: The epoch about to run, from 0.
            student_best: The student's best validation fitness so far (None before its first validation, when the
                gains stay whole: a pretrained student's score is not known before then).

        Returns:
            The share in [0, 1]; 1.0 without a measured teacher.
        """
        if self.teacher is None or student_best is None:  # no score to compare yet: the gains stay whole
            return 1.0
        student = float(student_best)
        if not math.isfinite(student):  # Ultralytics can record a NaN fitness: keep the share it had
            return self.last
        share = lead_share(self.teacher, student, self.margin)
        if share != self.last:
            report.log_lead(epoch + 1, share, self.teacher, student)
        self.last = share
        return share

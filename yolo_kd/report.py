"""What a KD run tells the user in its log: plain functions, printed on the main process only."""

from __future__ import annotations

from pathlib import Path

import torch
from ultralytics.utils import LOGGER, RANK, colorstr

from .config import KDConfig

PREFIX = colorstr("yolo-kd:")


def _main_process() -> bool:
    return RANK in {-1, 0}


def log_class_map(pairs: list[tuple[int, int]], student: list[str], teacher: list[str]) -> None:
    """Log a class map that is not the identity, and warn about student classes without a teacher class.

    Args:
        pairs: (student class, teacher class) pairs.
        student: Student class names.
        teacher: Teacher class names.
    """
    if not _main_process():
        return
    shown = ", ".join(f"{student[s]}<-{teacher[t]}" for s, t in pairs)
    missing = [student[i] for i in range(len(student)) if i not in {s for s, _ in pairs}]
    LOGGER.info(f"{PREFIX} class map (student<-teacher): {shown}")
    if missing:
        LOGGER.warning(f"{PREFIX} no teacher class for {missing}: no logit KD for them")


def log_init(reason: str | None, channels: str = "") -> None:
    """Log whether the student starts from the teacher's weights (``kd_init=teacher``).

    Args:
        reason: Why the teacher init was not applied, or None when it was.
        channels: Which teacher channels it keeps, and why, in words.
    """
    if not _main_process():
        return
    if reason is None:
        detail = f": {channels}" if channels else ""
        LOGGER.info(f"{PREFIX} kd_init=teacher: student starts from the teacher's weights{detail}")
    else:
        LOGGER.warning(f"{PREFIX} kd_init=teacher not applied, random init: {reason}")


def log_channels_fallback(reason: str) -> None:
    """Log that ``kd_init_channels=importance`` keeps evenly spaced channels for this pair, and why.

    Args:
        reason: The layer the importance plan does not trace.
    """
    if _main_process():
        LOGGER.warning(f"{PREFIX} kd_init_channels=importance: {reason}; the channels are evenly spaced instead")


def log_setup(
    cfg: KDConfig,
    teacher: str,
    dtype: torch.dtype | None,
    device: torch.device,
    channels: tuple[list[int], list[int]],
    box_off: str | None,
) -> None:
    """Log the teacher and every KD term's setting once, before training.

    Args:
        cfg: The KD settings.
        teacher: The teacher's path.
        dtype: The teacher's reduced precision, or None for fp32.
        device: Where it runs.
        channels: Student and teacher channels of the head input maps.
        box_off: Why box-distribution KD is off, or None.
    """
    if not _main_process():
        return
    s_ch, t_ch = channels
    LOGGER.info(f"{PREFIX} teacher {teacher} ({dtype or torch.float32} on {device})")
    LOGGER.info(
        f"{PREFIX} kd_cls={cfg.kd_cls} (T={cfg.kd_cls_temp}), kd_box={cfg.kd_box} (T={cfg.kd_box_temp}), "
        f"kd_feat={cfg.kd_feat} ({cfg.kd_feat_loss}, student {s_ch} -> teacher {t_ch} channels), "
        f"kd_cross={cfg.kd_cross} (student maps through the teacher's head), "
        f"kd_assign={cfg.kd_assign} (teacher's share in label assignment)"
    )
    if box_off is not None and cfg.kd_box > 0:
        LOGGER.warning(f"{PREFIX} box-distribution KD is off: {box_off}")


def log_teacher_fitness(fitness: float, margin: float, seconds: float) -> None:
    """Log the teacher's validation score, which ``kd_lead`` holds the student's against.

    Args:
        fitness: The teacher's validation fitness (mAP50-95).
        margin: ``kd_lead``.
        seconds: How long the validation took.
    """
    if not _main_process():
        return
    LOGGER.info(
        f"{PREFIX} teacher on the validation set: mAP50-95 {fitness:.4f} ({seconds:.1f}s); the KD gains follow "
        f"its lead over the student's best, whole from a lead of {margin} (kd_lead)"
    )
    if fitness < margin:  # the gains shrink from the student's first validation on: likely a teacher that is wrong
        LOGGER.warning(
            f"{PREFIX} the teacher scores {fitness:.4f} mAP50-95 on this validation set, under kd_lead={margin}: "
            "the KD gains shrink from the student's first validation and stop once it scores that much; check the "
            "teacher (its data, its classes, how long it trained)"
        )


def warn_lead_off(reason: str) -> None:
    """Warn that ``kd_lead`` is off for this run, and why.

    Args:
        reason: Why the teacher's score and the student's cannot be compared.
    """
    if _main_process():
        LOGGER.warning(f"{PREFIX} kd_lead is off: {reason}; the KD gains follow kd_final alone")


def log_lead(epoch: int, share: float, teacher: float, student: float) -> None:
    """Log a new share of the KD gains under ``kd_lead``.

    Args:
        epoch: The epoch about to run, from 1.
        share: The share of the KD gains.
        teacher: The teacher's validation fitness.
        student: The student's best validation fitness so far.
    """
    if _main_process():
        LOGGER.info(
            f"{PREFIX} epoch {epoch}: teacher {teacher:.4f}, student's best {student:.4f}: "
            f"KD gains x{share:.2f} (kd_lead)"
        )


def log_mixed_list(n_labeled: int, n_slots: int, n_unlabeled: int, ratio: float, path: Path, mixing: list[str]) -> None:
    """Log the mixed labeled/unlabeled training list, and that mixed samples are all pseudo-labeled.

    Args:
        n_labeled: Labeled images in the list.
        n_slots: Unlabeled slots in the list.
        n_unlabeled: Unlabeled images in the folder.
        ratio: ``unlabeled_ratio``.
        path: The list file.
        mixing: The sample-mixing augmentations on at the start.
    """
    if not _main_process():
        return
    LOGGER.info(
        f"{PREFIX} training on {n_labeled} labeled + {n_slots} unlabeled image slots "
        f"({n_unlabeled} unlabeled images, unlabeled_ratio={ratio}); list: {path}"
    )
    # A mixed sample keeps only its lead image's file name, so an unlabeled tile under a labeled lead cannot be told
    # apart and would train as empty background.
    if mixing:
        LOGGER.info(
            f"{PREFIX} unlabeled= with {mixing}: teacher pseudo-labels go on every training sample while mixing is on "
            "(a mixed sample may hold unlabeled tiles)"
        )


def warn_dropped(epoch: int, dropped: int) -> None:
    """Warn that KD was dropped on some steps of an epoch.

    Args:
        epoch: The epoch, from 1.
        dropped: Steps with a non-finite teacher output or KD term.
    """
    if dropped and _main_process():
        LOGGER.warning(
            f"{PREFIX} epoch {epoch}: KD dropped on {dropped} step(s) with a non-finite teacher output or KD term "
            "(their KD terms counted as 0)"
        )


def warn_trimmed(dropped: int, epoch: int) -> None:
    """Warn that ``results.csv`` rows past a resumed checkpoint's epoch were dropped.

    Args:
        dropped: Rows dropped.
        epoch: The checkpoint's epoch.
    """
    LOGGER.warning(
        f"{PREFIX} results.csv had {dropped} row(s) past the checkpoint's epoch {epoch}; "
        "dropped, they are trained again"
    )

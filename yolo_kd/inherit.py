"""Start a from-scratch student from weights selected out of the teacher (weight selection).

Xu et al., "Initializing Models with Larger Ones" (ICLR 2024): a small network initialised with evenly spaced
channels of a trained larger one of the same layout trains faster and ends better than one initialised at random,
most of all on small datasets and short schedules, and the gain adds to distillation's. YOLO sizes of one family that
share a depth (v8n/v8s, v8l/v8x, 11n/11s) have the same layers with fewer channels, so every student tensor has a
teacher tensor of the same name to select from.
"""

from __future__ import annotations

import torch
from torch import nn

from .hooks import find_detect_head


def evenly_spaced(n_teacher: int, n_student: int) -> torch.Tensor:
    """Teacher indices for a student dimension: ``floor(i * n_teacher / n_student)`` for ``i < n_student``.

    The same rule on both sides of a layer boundary picks the same channels, so a layer's selected inputs are the
    previous layer's selected outputs. It also keeps concatenations aligned when every block in them shrinks by the
    same factor (C2f, SPPF): block ``j`` of the student maps into block ``j`` of the teacher.
    """
    return torch.arange(n_student) * n_teacher // n_student


def _select(t: torch.Tensor, shape: torch.Size, skip_dims: tuple[int, ...] = ()) -> torch.Tensor:
    for d, n in enumerate(shape):
        if d not in skip_dims and t.shape[d] != n:
            t = t.index_select(d, evenly_spaced(t.shape[d], n))
    return t


def class_output_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the Detect head's class-score convs (one row per class: copied by class, not by position)."""
    head = find_detect_head(model)
    convs = {id(branch[-1]) for name in ("cv3", "one2one_cv3") for branch in getattr(head, name, None) or []}
    keys = set()
    for name, module in model.named_modules():
        if id(module) in convs:
            keys.update(f"{name}.{p}" for p, _ in module.named_parameters(recurse=False))
    return keys


def inherit_weights(student: nn.Module, teacher: nn.Module, class_pairs: list[tuple[int, int]]) -> str | None:
    """Overwrite ``student``'s weights in place with evenly spaced slices of ``teacher``'s.

    Every parameter and buffer (normalisation statistics included) is taken from the teacher tensor of the same
    name, keeping ``floor(i * n_t / n_s)`` along each dimension that shrinks. Class-score rows are copied by class
    (``class_pairs``: (student index, teacher index)); a student class without a teacher class keeps its own init.

    Args:
        student: The freshly built student; changed only when the whole selection succeeds.
        teacher: An unfused teacher of the same layout (same state-dict keys), any width at least the student's.
        class_pairs: Student and teacher class indices that match.

    Returns:
        None when the student was initialised, otherwise why not (the student is then untouched).
    """
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    if set(s_sd) != set(t_sd):
        only_s, only_t = len(set(s_sd) - set(t_sd)), len(set(t_sd) - set(s_sd))
        return f"their layers differ ({only_s} student and {only_t} teacher tensors have no counterpart; e.g. depth)"
    cls_keys = class_output_keys(student)
    new = {}
    for key, s in s_sd.items():
        t = t_sd[key].detach().to("cpu", torch.float32)
        skip = (0,) if key in cls_keys else ()
        if t.ndim != s.ndim or any(d not in skip and t.shape[d] < n for d, n in enumerate(s.shape)):
            return f"{key}: teacher {tuple(t.shape)} is not at least the student's {tuple(s.shape)}"
        t = _select(t, s.shape, skip)
        if key in cls_keys:
            rows = s.detach().to("cpu", torch.float32).clone()
            for si, ti in class_pairs:
                rows[si] = t[ti]
            t = rows
        new[key] = t.to(s.dtype)
    student.load_state_dict(new)
    return None

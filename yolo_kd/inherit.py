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
from ultralytics.nn.modules.block import Attention

from .hooks import find_detect_head

Plan = dict[str, dict[int, torch.Tensor]]
"""State-dict key -> {dimension: teacher indices} where the even spacing of ``evenly_spaced`` does not apply."""


def evenly_spaced(n_teacher: int, n_student: int) -> torch.Tensor:
    """Teacher indices for a student dimension: ``floor(i * n_teacher / n_student)`` for ``i < n_student``.

    The same rule on both sides of a layer boundary picks the same channels, so a layer's selected inputs are the
    previous layer's selected outputs. It also keeps concatenations aligned when every block in them shrinks by the
    same factor (C2f, SPPF): block ``j`` of the student maps into block ``j`` of the teacher.
    """
    return torch.arange(n_student) * n_teacher // n_student


def class_output_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the Detect head's class-score convs (one row per class: copied by class, not by position)."""
    head = find_detect_head(model)
    convs = {id(branch[-1]) for name in ("cv3", "one2one_cv3") for branch in getattr(head, name, None) or []}
    keys = set()
    for name, module in model.named_modules():
        if id(module) in convs:
            keys.update(f"{name}.{p}" for p, _ in module.named_parameters(recurse=False))
    return keys


def _attention_plan(name: str, s: Attention, t: Attention) -> Plan:
    """Keep whole heads: evenly spaced teacher heads, each with its own query, key and value channels.

    Ultralytics' ``Attention`` lays ``qkv``'s outputs out head by head as [q | k | v] and reads ``v`` back as
    ``head * head_dim + j`` channels for ``pe`` and ``proj``; even spacing over those would mix one head's q with
    another's k. ``proj``'s outputs join the residual stream and keep the even spacing of every other layer.
    """
    heads = evenly_spaced(t.num_heads, s.num_heads)
    qk, v = evenly_spaced(t.key_dim, s.key_dim), evenly_spaced(t.head_dim, s.head_dim)
    per_head = 2 * t.key_dim + t.head_dim
    qkv_rows = torch.cat([h * per_head + torch.cat([qk, t.key_dim + qk, 2 * t.key_dim + v]) for h in heads.tolist()])
    v_channels = torch.cat([h * t.head_dim + v for h in heads.tolist()])
    plan: Plan = {f"{name}.proj.conv.weight": {1: v_channels}}  # proj's outputs (and its BN): even spacing
    for conv, rows in (("qkv", qkv_rows), ("pe", v_channels)):  # output rows of the conv and of its BN
        for key in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            plan[f"{name}.{conv}.{key}"] = {0: rows}
    return plan


def selection_plan(student: nn.Module, teacher: nn.Module) -> Plan | str:
    """The teacher indices of every dimension that is not evenly spaced, or why the pair cannot be selected."""
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    if set(s_sd) != set(t_sd):
        only_s, only_t = len(set(s_sd) - set(t_sd)), len(set(t_sd) - set(s_sd))
        return (
            f"their layers differ ({only_s} student and {only_t} teacher tensors have no counterpart: "
            "another depth or family)"
        )
    s_reg, t_reg = (getattr(find_detect_head(m), "reg_max", None) for m in (student, teacher))
    if s_reg != t_reg:
        return f"reg_max differs (student {s_reg}, teacher {t_reg}): box bins would not match"
    t_modules = dict(teacher.named_modules())
    plan: Plan = {}
    for name, module in student.named_modules():
        if isinstance(module, Attention):
            plan.update(_attention_plan(name, module, t_modules[name]))
        elif hasattr(module, "num_heads"):  # an attention layout not handled here (AAttn, nn.MultiheadAttention...)
            return f"{name} ({type(module).__name__}) has a head layout weight selection does not handle"
    return plan


def inherit_weights(student: nn.Module, teacher: nn.Module, class_pairs: list[tuple[int, int]]) -> str | None:
    """Overwrite ``student``'s weights in place with evenly spaced slices of ``teacher``'s.

    Every parameter and buffer (normalisation statistics included) is taken from the teacher tensor of the same
    name, keeping ``floor(i * n_t / n_s)`` along each dimension that shrinks (whole heads in attention blocks, see
    ``selection_plan``). Class-score rows are copied by class (``class_pairs``: (student index, teacher index)); a
    student class without a teacher class keeps its own init.

    Args:
        student: The freshly built student; changed only when the whole selection succeeds.
        teacher: An unfused teacher of the same layout (same state-dict keys and ``reg_max``), at least as wide.
        class_pairs: Student and teacher class indices that match.

    Returns:
        None when the student was initialised, otherwise why not (the student is then untouched).
    """
    plan = selection_plan(student, teacher)
    if isinstance(plan, str):
        return plan
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    cls_keys = class_output_keys(student)
    new = {}
    for key, s in s_sd.items():
        t = t_sd[key].detach().to("cpu", torch.float32)
        by_class = key in cls_keys
        if t.ndim != s.ndim or any(t.shape[d] < n for d, n in enumerate(s.shape) if not (by_class and d == 0)):
            return f"{key}: teacher {tuple(t.shape)} is not at least the student's {tuple(s.shape)}"
        for d, n in enumerate(s.shape):
            if by_class and d == 0:
                continue
            index = plan.get(key, {}).get(d)
            if index is None and t.shape[d] != n:
                index = evenly_spaced(t.shape[d], n)
            if index is not None:
                t = t.index_select(d, index)
        if by_class:
            rows = s.detach().to("cpu", torch.float32).clone()
            for si, ti in class_pairs:
                rows[si] = t[ti]
            t = rows
        new[key] = t.to(s.dtype)
    student.load_state_dict(new)
    return None

"""Matching the teacher's classes to the student's."""

from __future__ import annotations

from typing import Any

from .config import KDConfigError


def name_list(names: Any) -> list[str]:
    """Class names as a list, from Ultralytics' ``{index: name}`` dict or a list (None: no names).

    A dict is read in index order, as Ultralytics indexes it, whatever order its YAML wrote the entries in.
    """
    if isinstance(names, dict):
        try:
            return [v for _, v in sorted(names.items(), key=lambda kv: int(kv[0]))]
        except (TypeError, ValueError):  # keys that are not indices: Ultralytics refuses such a YAML itself
            return list(names.values())
    return list(names or [])


def norm_name(name: Any) -> str:
    """Class names compare case-, space-, underscore- and hyphen-insensitively ('Traffic Light' == 'traffic_light')."""
    return str(name).lower().replace(" ", "").replace("_", "").replace("-", "")


def _index(key: Any, names: list[str], side: str) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        if not 0 <= key < len(names):
            raise KDConfigError(f"kd_class_map: {side} class index {key} is out of range 0..{len(names) - 1}")
        return key
    wanted = norm_name(key)
    for i, n in enumerate(names):
        if norm_name(n) == wanted:
            return i
    raise KDConfigError(f"kd_class_map: {side} has no class named {key!r}")


def class_pairs(
    student_names: list[str], teacher_names: list[str], explicit: dict | None = None
) -> list[tuple[int, int]]:
    """(student index, teacher index) for every student class that has a teacher class.

    With ``explicit`` (student class -> teacher class, by name or index) only those pairs are used; otherwise classes
    are matched by normalised name. Teacher classes absent from the student are simply left out.
    """
    if explicit:
        pairs = [
            (_index(s, student_names, "student"), _index(t, teacher_names, "teacher")) for s, t in explicit.items()
        ]
        seen = [si for si, _ in pairs]
        twice = next((si for si in seen if seen.count(si) > 1), None)
        if twice is not None:  # one name and one index for the same class: one logit cannot match two targets
            raise KDConfigError(
                f"kd_class_map: student class {student_names[twice]!r} ({twice}) is mapped twice; "
                "give each student class one teacher class"
            )
    else:
        teacher_index = {norm_name(n): i for i, n in enumerate(teacher_names)}
        pairs = [(i, teacher_index[norm_name(n)]) for i, n in enumerate(student_names) if norm_name(n) in teacher_index]
    if not pairs:
        raise KDConfigError(
            f"teacher classes {teacher_names[:6]}{'...' if len(teacher_names) > 6 else ''} and student classes "
            f"{student_names[:6]}{'...' if len(student_names) > 6 else ''} have no class in common; "
            "give kd_class_map (student class -> teacher class)"
        )
    return sorted(set(pairs))


def is_identity(pairs: list[tuple[int, int]], n_student: int, n_teacher: int) -> bool:
    """True when student and teacher classes coincide index for index (no gather needed)."""
    return n_student == n_teacher == len(pairs) and all(s == t for s, t in pairs)

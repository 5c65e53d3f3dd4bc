"""The one error type yolo-kd raises for bad input: the CLI prints it as one line, before any file is written."""

from __future__ import annotations


class KDConfigError(ValueError):
    """A bad KD setting, teacher, file or key, reported as one line before any training starts."""

"""Forward hooks that read the neck maps feeding a Detect head, held by a context manager."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from ultralytics.nn.modules.head import Detect


def find_detect_head(model: nn.Module) -> Detect:
    """Find the model's Detect head by type (v5u/v8/v9/11/26 alike); its inputs are the P3/P4/P5 neck maps.

    Args:
        model: An Ultralytics model.

    Returns:
        The head.

    Raises:
        ValueError: The model has no Detect head.
    """
    layers = getattr(model, "model", None)
    for m in layers if layers is not None else []:
        if isinstance(m, Detect):
            return m
    raise ValueError(f"{type(model).__name__} has no Detect head")


class DetectTap:
    """Capture the feature maps that enter a model's Detect head, for the duration of a ``with`` block.

    The head is found by type, never by layer index, so any model size and any Detect-headed family works. The
    captured list is released when the block exits, so no activation outlives the step that made it.

    Example:
        >>> with DetectTap(teacher) as tap:
        ...     teacher(images)
        >>> feats = tap.feats  # list of (B, C_i, H_i, W_i), valid inside the block only
    """

    def __init__(self, model: nn.Module) -> None:
        self.head = find_detect_head(model)
        self.feats: list[torch.Tensor] | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _capture(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        # one map per level: YOLOE's model appends its class embeddings to the head's input list
        self.feats = list(inputs[0])[: self.head.nl]

    def __enter__(self) -> DetectTap:
        """Register the hook on the head; it captures the head's input maps on each forward pass."""
        self._handle = self.head.register_forward_pre_hook(self._capture)
        return self

    def __exit__(self, *exc: object) -> None:
        """Remove the hook and forget any captured maps, also when the block raised."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.feats = None

    def pop(self) -> list[torch.Tensor]:
        """Hand over the captured maps and forget them, so the tap holds no tensor after the step.

        Returns:
            The maps entering the head, one per level.
        """
        if self.feats is None:
            raise RuntimeError("DetectTap captured nothing: run the model inside the 'with' block first")
        feats, self.feats = self.feats, None
        return feats

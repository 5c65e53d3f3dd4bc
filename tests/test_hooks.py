"""DetectTap on a toy model, and the teacher wrapper's frozen state."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from ultralytics.nn.modules.head import Detect

from yolo_kd.hooks import DetectTap, find_detect_head


class Toy(nn.Module):
    """Two stems feeding a 2-level Detect head: the smallest model with a real head."""

    def __init__(self) -> None:
        super().__init__()
        head = Detect(nc=2, ch=(8, 16))
        head.stride = torch.tensor([2.0, 4.0])
        self.model = nn.ModuleList([nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 2, 1), head])

    def forward(self, x: torch.Tensor):
        a = self.model[0](x)
        b = self.model[1](a)
        self.seen = (a, b)
        return self.model[2]([a, b])


def test_tap_captures_the_head_inputs_and_leaves_no_hook() -> None:
    toy = Toy()
    assert find_detect_head(toy) is toy.model[2]
    with DetectTap(toy) as tap:
        toy(torch.randn(2, 3, 16, 16))
        feats = tap.pop()
    assert [f.shape for f in feats] == [torch.Size([2, 8, 8, 8]), torch.Size([2, 16, 4, 4])]
    assert all(f is s for f, s in zip(feats, toy.seen))
    toy(torch.randn(2, 3, 16, 16))  # after the block the hook is gone: this pass is not captured
    with pytest.raises(RuntimeError, match="captured nothing"):
        tap.pop()


def test_tap_removes_its_hook_on_error() -> None:
    toy = Toy()
    tap = DetectTap(toy)
    with pytest.raises(RuntimeError), tap:
        toy(torch.randn(1, 5, 16, 16))  # wrong channel count: the block raises
    toy(torch.randn(1, 3, 16, 16))
    with pytest.raises(RuntimeError, match="captured nothing"):
        tap.pop()


def test_no_detect_head_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no Detect head"):
        find_detect_head(nn.Sequential(nn.Conv2d(3, 3, 1)))

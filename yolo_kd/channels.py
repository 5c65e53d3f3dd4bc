"""Which of a wider teacher's channels a student inherits: the teacher's most important ones (``kd_init_channels``).

Weight selection (Xu et al., ICLR 2024) keeps evenly spaced channels. With a teacher three times as wide (yolov8m for
yolov8n) that keeps an arbitrary third of them, and which third matters: shifting the even spacing by one or two
channels moved a 20-epoch student by up to 4 points on a seed, 2.8 between the means (docs/BENCHMARKS.md). Here each
channel space keeps the channels whose normalisation scale ``|gamma|`` is largest in the teacher, network slimming's
importance measure (Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017),
sorted back into their order.

A channel space is every tensor that one choice must index alike: a conv's outputs and the inputs of every conv that
reads them, through C2f chunks, SPPF pools, upsampling and concatenations. A residual chain (C2f's shortcut
bottlenecks) is one space for all its blocks, scored by the sum of its producers' scales. This plan covers the
YOLOv8 layer kinds (Conv, C2f with Bottleneck blocks, SPPF, Upsample, Concat, Detect); other layers (C3k, C2PSA
attention, depthwise heads) return why, and the caller keeps even spacing.
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules.block import SPPF, Bottleneck, C2f, C3k2
from ultralytics.nn.modules.conv import Concat, Conv
from ultralytics.nn.modules.head import Detect

Plan = dict[str, dict[int, torch.Tensor]]
"""State-dict key -> {dimension: teacher indices} (dimensions not listed keep weight selection's even spacing)."""


def top_channels(scores: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` highest-scoring indices of ``scores``, in increasing order (all of them when ``n`` is its length).

    Example:
        >>> top_channels(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2).tolist()
        [1, 3]
    """
    if n == len(scores):
        return torch.arange(n)
    return torch.sort(torch.topk(scores, n).indices).values


def _unhandled(student: nn.Module) -> str | None:
    """Why the importance plan cannot cover this model (a layer or block kind it does not trace), or None."""
    for i, layer in enumerate(student.model):
        kind = type(layer)
        if kind in (C2f, C3k2):  # C3k2 with plain bottlenecks runs C2f's forward
            blocks = {type(b) for b in layer.m}
            if blocks != {Bottleneck} or any(b.cv2.conv.groups != 1 for b in layer.m):
                return f"layer {i} ({kind.__name__}) holds {'/'.join(sorted(b.__name__ for b in blocks))} blocks"
        elif kind is Detect:
            if getattr(layer, "one2one_cv2", None) is not None:
                return f"layer {i} (Detect) has an end-to-end branch"
            for seq in (*layer.cv2, *layer.cv3):
                if [type(m) for m in seq] != [Conv, Conv, nn.Conv2d] or any(m.conv.groups != 1 for m in seq[:2]):
                    return f"layer {i} (Detect) has branches of other layers than Conv, Conv, Conv2d"
        elif kind not in (Conv, SPPF, nn.Upsample, Concat) or (kind is Conv and layer.conv.groups != 1):
            return f"layer {i} is a {kind.__name__}"
    return None


def importance_plan(
    student: nn.Module, teacher: nn.Module, keys: dict[str, str]
) -> tuple[Plan, dict[int, torch.Tensor]] | str:
    """Teacher indices along every dimension of every conv and normalisation tensor, chosen by importance.

    Args:
        student: The student model (unfused), of the YOLOv8 layer kinds.
        teacher: The teacher model (unfused) of the same layers, as wide or wider.
        keys: Student state-dict key -> teacher key (a deeper teacher's chosen blocks, ``inherit.selection``).

    Returns:
        (plan, outputs): student key -> {dimension: teacher indices}, and layer index -> the teacher output channels
        that layer's student output stands for; or why the model is not covered.
    """
    reason = _unhandled(student)
    if reason is not None:
        return reason
    planner = _Planner(student.state_dict(), teacher.state_dict(), keys)
    kept: dict[int, torch.Tensor] = {}  # layer -> the teacher output channels kept
    size: dict[int, int] = {}  # layer -> the teacher's output channels
    for i, (layer, t_layer) in enumerate(zip(student.model, teacher.model)):
        sources = [layer.f] if isinstance(layer.f, int) else list(layer.f)
        sources = [i + f if f < 0 else f for f in sources]
        name, x = f"model.{i}", kept.get(sources[0])
        if isinstance(layer, Conv):
            kept[i], size[i] = planner.conv(name, x), t_layer.conv.out_channels
        elif isinstance(layer, C2f):
            kept[i], size[i] = planner.c2f(name, layer, t_layer.c, x), t_layer.cv2.conv.out_channels
        elif isinstance(layer, SPPF):
            hidden = planner.conv(f"{name}.cv1", x)
            c_t, pools = t_layer.cv1.conv.out_channels, getattr(layer, "n", 3)
            pooled = torch.cat([hidden + q * c_t for q in range(pools + 1)])
            kept[i] = planner.conv(f"{name}.cv2", pooled, outputs=x if getattr(layer, "add", False) else None)
            size[i] = t_layer.cv2.conv.out_channels
        elif isinstance(layer, nn.Upsample):
            kept[i], size[i] = x, size[sources[0]]
        elif isinstance(layer, Concat):  # each part keeps its channels, at its offset in the teacher's concatenation
            offsets = [sum(size[f] for f in sources[:q]) for q in range(len(sources))]
            kept[i] = torch.cat([kept[f] + offset for f, offset in zip(sources, offsets)])
            size[i] = sum(size[f] for f in sources)
        else:  # Detect: per level, box and class branches of Conv, Conv, Conv2d
            for level, f in enumerate(sources):
                for branch in ("cv2", "cv3"):
                    seq = f"{name}.{branch}.{level}"
                    hidden = planner.conv(f"{seq}.1", planner.conv(f"{seq}.0", kept[f]))
                    planner.plan[f"{seq}.2.weight"] = {1: hidden}  # its rows: box bins as they are, classes by class
    return planner.plan, kept


class _Planner:
    """Collects the plan: each conv's kept outputs (by the teacher's scales) and inputs (what its input kept)."""

    def __init__(self, s_sd: dict[str, torch.Tensor], t_sd: dict[str, torch.Tensor], keys: dict[str, str]) -> None:
        self.s_sd, self.t_sd, self.keys = s_sd, t_sd, keys
        self.plan: Plan = {}

    def scale(self, conv: str) -> torch.Tensor:
        """The teacher's ``|gamma|`` for the student's Conv module named ``conv`` (its chosen block's, if deeper).

        Ties (an untrained teacher's scales are all 1) are broken by ``torch.topk``'s order: any consistent choice.
        """
        return self.t_sd[self.keys[f"{conv}.bn.weight"]].detach().abs().float().cpu()

    def conv(self, conv: str, inputs: torch.Tensor | None, outputs: torch.Tensor | None = None) -> torch.Tensor:
        """Plan a Conv: its conv weight and normalisation.

        Args:
            conv: The student's Conv module name.
            inputs: The teacher channels its input kept (None for the image: all of them).
            outputs: The teacher channels its output keeps; by default the teacher's most important ones.

        Returns:
            The kept output channels.
        """
        if outputs is None:
            outputs = top_channels(self.scale(conv), self.s_sd[f"{conv}.conv.weight"].shape[0])
        self.plan[f"{conv}.conv.weight"] = {0: outputs} if inputs is None else {0: outputs, 1: inputs}
        for p in ("weight", "bias", "running_mean", "running_var"):
            self.plan[f"{conv}.bn.{p}"] = {0: outputs}
        return outputs

    def c2f(self, name: str, layer: C2f, c_t: int, x: torch.Tensor) -> torch.Tensor:
        """Plan a C2f: cv1's two chunks, each kept block, and the output conv's chunks; returns its kept outputs.

        cv1's outputs are [y0 | y1], ``c`` channels each. A student block inherits the teacher block ``keys`` names
        for it, so its output chunk sits at ``(2 + k) * c`` in the teacher's output-conv input. With shortcuts, y1
        and every block output are one residual stream: one choice, scored by cv1's y1 scales plus every kept
        block's last scales.
        """
        c_s, blocks = layer.c, range(len(layer.m))
        # "model.<i>.m.<k>.cv1...": the teacher block that student block j inherits (inherit's depth map)
        teacher_block = [int(self.keys[f"{name}.m.{j}.cv1.conv.weight"].split(".")[3]) for j in blocks]
        first, residual = self.scale(f"{name}.cv1"), layer.m[0].add
        stream = first[c_t:] + sum((self.scale(f"{name}.m.{j}.cv2") for j in blocks if residual), torch.zeros(c_t))
        y0, y1 = top_channels(first[:c_t], c_s), top_channels(stream, c_s)
        self.conv(f"{name}.cv1", x, torch.cat([y0, c_t + y1]))
        current, chunks = y1, [y0, c_t + y1]
        for j, k in zip(blocks, teacher_block):
            hidden = self.conv(f"{name}.m.{j}.cv1", current)
            current = self.conv(f"{name}.m.{j}.cv2", hidden, outputs=current if residual else None)
            chunks.append((2 + k) * c_t + current)
        return self.conv(f"{name}.cv2", torch.cat(chunks))

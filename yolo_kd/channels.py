"""Which of a wider teacher's channels a student inherits: the teacher's most important ones (``kd_init_channels``).

Weight selection (Xu et al., ICLR 2024) keeps evenly spaced channels. With a teacher three times as wide (yolov8m for
yolov8n) that keeps an arbitrary third of them, and which third matters: shifting the even spacing by one or two
channels moved a 20-epoch student by up to 4 points on a seed, 2.8 between the means (docs/BENCHMARKS.md). Here each
channel space keeps the channels whose normalisation scale ``|gamma|`` is largest in the teacher, network slimming's
importance measure (Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017),
sorted back into their order.

A channel space is every tensor that one choice must index alike: a conv's outputs and the inputs of every conv that
reads them, through C2f/C3k2 chunks, SPPF pools, upsampling, concatenations and depthwise convs (whose outputs are
their inputs). A residual chain (the shortcut bottlenecks of C2f and C3k, C2PSA's attention blocks) is one space for
all its blocks, scored by the sum of its producers' scales. Attention keeps whole heads, evenly spaced, as weight
selection does (``head_channels``). This plan covers the YOLOv8, YOLO11 and YOLO26 layer kinds (Conv, C2f/C3k2 with
Bottleneck, C3k or attention blocks, C2PSA, SPPF, Upsample, Concat, Detect with Conv or depthwise branches, end-to-end
copies included); other layers (area attention, YOLOv10's blocks) return why, and the caller keeps even spacing.
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules.block import C2PSA, SPPF, Attention, Bottleneck, C2f, C3k, C3k2, PSABlock
from ultralytics.nn.modules.conv import Concat, Conv, DWConv
from ultralytics.nn.modules.head import Detect

Plan = dict[str, dict[int, torch.Tensor]]
"""State-dict key -> {dimension: teacher indices} (dimensions not listed keep weight selection's even spacing)."""


def evenly_spaced(n_teacher: int, n_student: int) -> torch.Tensor:
    """Teacher indices for a student dimension: ``floor(i * n_teacher / n_student)`` for ``i < n_student``.

    The same rule on both sides of a layer boundary picks the same channels, so a layer's selected inputs are the
    previous layer's selected outputs. It also keeps concatenations aligned when every block in them shrinks by the
    same factor (C2f, SPPF): block ``j`` of the student maps into block ``j`` of the teacher.
    """
    return torch.arange(n_student) * n_teacher // n_student


def head_channels(s: Attention, t: Attention) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole teacher heads, evenly spaced, each with its own query, key and value channels.

    Ultralytics' ``Attention`` lays ``qkv``'s outputs out head by head as [q | k | v] and reads ``v`` back as
    ``head * head_dim + j`` channels for ``pe`` and ``proj``; any other choice would mix one head's q with another's k.

    Returns:
        (qkv rows, v channels): the teacher's ``qkv`` output rows, and the value channels ``pe`` and ``proj`` read.
    """
    heads = evenly_spaced(t.num_heads, s.num_heads).tolist()
    qk, v = evenly_spaced(t.key_dim, s.key_dim), evenly_spaced(t.head_dim, s.head_dim)
    per_head = 2 * t.key_dim + t.head_dim
    qkv_rows = torch.cat([h * per_head + torch.cat([qk, t.key_dim + qk, 2 * t.key_dim + v]) for h in heads])
    return qkv_rows, torch.cat([h * t.head_dim + v for h in heads])


def top_channels(scores: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` highest-scoring indices of ``scores``, in increasing order (all of them when ``n`` is its length).

    Example:
        >>> top_channels(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2).tolist()
        [1, 3]
    """
    if n == len(scores):
        return torch.arange(n)
    return torch.sort(torch.topk(scores, n).indices).values


def _depthwise(conv: Conv) -> bool:
    """A depthwise Conv (DWConv): each output channel reads only the input channel of the same index."""
    c = conv.conv
    return c.groups == c.in_channels == c.out_channels


def _unhandled_block(block: nn.Module) -> str | None:
    """Why a repeated block is not traced (its kind), or None: Bottleneck, C3k of Bottlenecks, PSABlock, Sequential."""
    kind = type(block)
    if kind is nn.Sequential:
        return next((why for why in map(_unhandled_block, block) if why is not None), None)
    if kind is Bottleneck:
        return None if block.cv2.conv.groups == 1 else "grouped Bottleneck"
    if kind is C3k:
        return _unhandled_block(block.m)
    if kind is PSABlock:
        return None if type(block.attn) is Attention else type(block.attn).__name__
    return kind.__name__


def _unhandled(student: nn.Module) -> str | None:
    """Why the importance plan cannot cover this model (a layer or block kind it does not trace), or None."""
    for i, layer in enumerate(student.model):
        kind = type(layer)
        if kind in (C2f, C3k2, C2PSA):
            why = next((w for w in map(_unhandled_block, layer.m) if w is not None), None)
            if why is not None:
                return f"layer {i} ({kind.__name__}) holds {why} blocks"
        elif kind is Detect:
            for name, branches in _branches(layer):
                leaves = [_leaves(branch) for branch in branches]
                if not all(_plain_branch(convs) for convs in leaves):
                    return f"layer {i} (Detect) has {name} branches of other layers than Conv, DWConv, Conv2d"
        elif kind not in (Conv, SPPF, nn.Upsample, Concat) or (kind is Conv and layer.conv.groups != 1):
            return f"layer {i} is a {kind.__name__}"
    return None


def importance_plan(
    student: nn.Module, teacher: nn.Module, keys: dict[str, str]
) -> tuple[Plan, dict[int, torch.Tensor]] | str:
    """Teacher indices along every dimension of every conv and normalisation tensor, chosen by importance.

    Args:
        student: The student model (unfused), of the layer kinds above.
        teacher: The teacher model (unfused) of the same layers, as wide or wider.
        keys: Student state-dict key -> teacher key (a deeper teacher's chosen blocks, ``inherit.selection``).

    Returns:
        (plan, outputs): student key -> {dimension: teacher indices}, and layer index -> the teacher output channels
        that layer's student output stands for; or why the model is not covered.
    """
    reason = _unhandled(student)
    if reason is not None:
        return reason
    planner = _Planner(student.state_dict(), teacher.state_dict(), keys, dict(teacher.named_modules()))
    kept: dict[int, torch.Tensor] = {}  # layer -> the teacher output channels kept
    size: dict[int, int] = {}  # layer -> the teacher's output channels
    for i, (layer, t_layer) in enumerate(zip(student.model, teacher.model)):
        sources = [layer.f] if isinstance(layer.f, int) else list(layer.f)
        sources = [i + f if f < 0 else f for f in sources]
        name, x = f"model.{i}", kept.get(sources[0])
        if isinstance(layer, Conv):
            kept[i], size[i] = planner.conv(name, x), t_layer.conv.out_channels
        elif isinstance(layer, (C2f, C2PSA)):
            kept[i], size[i] = planner.split(name, layer, t_layer.c, x), t_layer.cv2.conv.out_channels
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
        else:  # Detect: per level, box and class branches (and their end-to-end copies) ending in a plain Conv2d
            for branch, seqs in _branches(layer):
                for level, (f, seq) in enumerate(zip(sources, seqs)):
                    planner.branch(f"{name}.{branch}.{level}", seq, kept[f])
    return planner.plan, kept


class _Planner:
    """Collects the plan: each conv's kept outputs (by the teacher's scales) and inputs (what its input kept)."""

    def __init__(
        self,
        s_sd: dict[str, torch.Tensor],
        t_sd: dict[str, torch.Tensor],
        keys: dict[str, str],
        t_modules: dict[str, nn.Module],
    ) -> None:
        self.s_sd, self.t_sd, self.keys, self.t_modules = s_sd, t_sd, keys, t_modules
        self.plan: Plan = {}

    def scale(self, conv: str) -> torch.Tensor:
        """The teacher's ``|gamma|`` for the student's Conv module named ``conv`` (its chosen block's, if deeper).

        Ties (an untrained teacher's scales are all 1) are broken by ``torch.topk``'s order: any consistent choice.
        """
        return self.t_sd[self.keys[f"{conv}.bn.weight"]].detach().abs().float().cpu()

    def teacher_name(self, name: str) -> str:
        """The teacher module that the student's module ``name`` inherits: its chosen block's, if deeper.

        ``name`` is a repeated block or lies inside one; a deeper teacher's renames replace the block's prefix
        (``model.10.m.0.`` -> ``model.10.m.1.``) and keep what follows, so any of its keys gives the teacher name.
        """
        key = next(k for k in self.s_sd if k.startswith(f"{name}."))
        return self.keys[key].removesuffix(key[len(name) :])

    def conv(self, conv: str, inputs: torch.Tensor | None, outputs: torch.Tensor | None = None) -> torch.Tensor:
        """Plan a Conv: its conv weight and normalisation.

        Args:
            conv: The student's Conv module name.
            inputs: The teacher channels its input kept (None for the image, and for a depthwise conv: the weight's
                input dimension is 1).
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

    def stream(self, scores: torch.Tensor, chain: list[tuple[str, nn.Module]], n: int) -> torch.Tensor:
        """The kept channels of a space that one producer opens and each leading residual block adds to.

        Args:
            scores: The opening producer's scales over the space.
            chain: (name, block) of the blocks that follow it in order; the space runs through the residual ones.
            n: The student's channels in the space.

        Returns:
            The ``n`` channels with the largest summed scales.
        """
        for name, block in chain:
            producers = _residual_producers(name, block)
            if producers is None:
                break
            scores = scores + sum(self.scale(p) for p in producers)
        return top_channels(scores, n)

    def split(self, name: str, layer: C2f | C2PSA, c_t: int, x: torch.Tensor) -> torch.Tensor:
        """Plan a C2f/C3k2 or C2PSA: cv1's two chunks, each kept block, and the output conv.

        cv1's outputs are [y0 | y1], ``c`` channels each, and the blocks run on y1 one after another. C2f's output
        conv reads [y0, y1, block 0, block 1, ...]: a student block inherits the teacher block ``keys`` names for it,
        so its output chunk sits at ``(2 + k) * c`` there. C2PSA's reads [y0, last block]. Through residual blocks,
        y1 and the blocks' outputs are one stream, scored by cv1's y1 scales plus every kept block's producers.

        Args:
            name: The layer's name (``model.<i>``).
            layer: The student layer.
            c_t: The teacher layer's chunk width (its ``c``).
            x: The teacher channels the layer's input kept.

        Returns:
            The layer's kept output channels.
        """
        c_s, blocks = layer.c, [(f"{name}.m.{j}", b) for j, b in enumerate(layer.m)]
        first = self.scale(f"{name}.cv1")
        y0, y1 = top_channels(first[:c_t], c_s), self.stream(first[c_t:], blocks, c_s)
        self.conv(f"{name}.cv1", x, torch.cat([y0, c_t + y1]))
        current, chunks = y1, [y0, c_t + y1]
        for block_name, block in blocks:
            current = self.block(block_name, block, current)
            k = int(self.teacher_name(block_name).rsplit(".", 1)[1])  # the teacher block it inherits: model.<i>.m.<k>
            chunks.append((2 + k) * c_t + current)
        return self.conv(f"{name}.cv2", torch.cat([y0, c_t + current] if isinstance(layer, C2PSA) else chunks))

    def block(self, name: str, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Plan one repeated block: a Bottleneck, a C3k, a PSABlock, or a Sequential of them.

        Args:
            name: The block's name.
            block: The student block.
            x: The teacher channels its input kept.

        Returns:
            Its kept output channels: ``x`` for a residual block.
        """
        if isinstance(block, nn.Sequential):
            for j, inner in enumerate(block):
                x = self.block(f"{name}.{j}", inner, x)
            return x
        if isinstance(block, Bottleneck):
            hidden = self.conv(f"{name}.cv1", x)
            return self.conv(f"{name}.cv2", hidden, outputs=x if block.add else None)
        if isinstance(block, C3k):  # cv3 reads [m(cv1(x)) | cv2(x)]; cv1 opens the residual stream of m
            c_s, c_t = block.cv1.conv.out_channels, self.t_modules[self.teacher_name(f"{name}.cv1")].conv.out_channels
            chain = [(f"{name}.m.{j}", b) for j, b in enumerate(block.m)]
            stream = self.conv(f"{name}.cv1", x, self.stream(self.scale(f"{name}.cv1"), chain, c_s))
            stream = self.block(f"{name}.m", block.m, stream)
            return self.conv(f"{name}.cv3", torch.cat([stream, c_t + self.conv(f"{name}.cv2", x)]))
        # PSABlock: attention then a two-conv feed-forward, each added to the stream when block.add
        qkv_rows, values = head_channels(block.attn, self.t_modules[self.teacher_name(f"{name}.attn")])
        self.conv(f"{name}.attn.qkv", x, qkv_rows)
        self.conv(f"{name}.attn.pe", None, values)  # depthwise over the values
        y = self.conv(f"{name}.attn.proj", values, outputs=x if block.add else None)
        hidden = self.conv(f"{name}.ffn.0", y)
        return self.conv(f"{name}.ffn.1", hidden, outputs=y if block.add else None)

    def branch(self, name: str, seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """Plan a Detect branch: Convs and depthwise Convs (nested Sequentials too), then a plain Conv2d.

        The Conv2d's rows stay as they are (box bins; classes are copied by class): only its inputs are planned.

        Args:
            name: The branch's name (``model.<i>.cv3.<level>``).
            seq: The student branch (``_plain_branch`` has checked its layers).
            x: The teacher channels of the level's input that the student kept.

        Returns:
            The channels the last Conv2d reads.
        """
        for j, m in enumerate(seq):
            if isinstance(m, nn.Sequential):
                x = self.branch(f"{name}.{j}", m, x)
            elif isinstance(m, Conv):  # a depthwise conv's outputs are its inputs, one each (its weight has 1 input)
                x = self.conv(f"{name}.{j}", None, x) if _depthwise(m) else self.conv(f"{name}.{j}", x)
            else:
                self.plan[f"{name}.{j}.weight"] = {1: x}
        return x


def _leaves(module: nn.Module) -> list[nn.Module]:
    """A branch's layers in order, nested Sequentials opened (a Conv module counts as one layer)."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


def _plain_branch(layers: list[nn.Module]) -> bool:
    """Convs (plain or depthwise) ending in a plain Conv2d: the Detect branches ``_Planner.branch`` plans."""
    *convs, last = layers
    plain = type(last) is nn.Conv2d and last.groups == 1
    return plain and all(type(m) in (Conv, DWConv) and (m.conv.groups == 1 or _depthwise(m)) for m in convs)


def _branches(head: Detect) -> list[tuple[str, nn.ModuleList]]:
    """The Detect head's branch lists by name: box and class, and an end-to-end head's one-to-one copies of both."""
    names = ("cv2", "cv3", "one2one_cv2", "one2one_cv3")
    return [(n, getattr(head, n)) for n in names if getattr(head, n, None) is not None]


def _residual_producers(name: str, block: nn.Module) -> list[str] | None:
    """The convs whose outputs a block adds to its input (its output is then its input's space), or None."""
    if isinstance(block, nn.Sequential):
        parts = [_residual_producers(f"{name}.{j}", b) for j, b in enumerate(block)]
        return None if any(p is None for p in parts) else [conv for p in parts for conv in p]
    if isinstance(block, Bottleneck) and block.add:
        return [f"{name}.cv2"]
    if isinstance(block, PSABlock) and block.add:
        return [f"{name}.attn.proj", f"{name}.ffn.1"]
    return None

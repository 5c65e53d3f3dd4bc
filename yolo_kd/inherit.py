"""Start a from-scratch student from weights selected out of the teacher (weight selection).

Xu et al., "Initializing Models with Larger Ones" (ICLR 2024): a small network initialised with evenly spaced
channels of a trained larger one of the same layout trains faster and ends better than one initialised at random,
most of all on small datasets and short schedules, and the gain adds to distillation's. YOLO sizes of one family that
share a depth (v8n/v8s, v8l/v8x, 11n/11s) have the same layers with fewer channels, so every student tensor has a
teacher tensor of the same name to select from.

A deeper teacher (v8m/l/x for v8n/s, 11x for 11m) has more repeated blocks inside some layers (C2f/C3k2 bottlenecks,
C3 and C2PSA chains). The paper's layer selection applies there: student block ``j`` of such a layer inherits teacher
block ``first[j] = j`` (``blocks="first"``, the paper's choice) or ``even[j] = floor(j * n_t / n_s)``
(``blocks="even"``), and C2f's output conv keeps the input channels of exactly the inherited blocks. A pair whose
blocks differ in kind (yolo11m's C3k blocks where yolo11n has plain bottlenecks) has no such mapping and is refused.

Which channels a narrower student keeps is ``channels``: the paper's evenly spaced ones (``"even"``), the teacher's
most important ones (``"importance"``, see channels.py; the YOLOv8, YOLO11 and YOLO26 layer kinds, else evenly
spaced), or ``"auto"`` (the default), which picks by how the teacher was trained (``channel_choice``). Importance
won from every teacher trained from scratch measured (four; +10 points for a 20-epoch yolov8n from a yolov8m) and
lost from every teacher fine-tuned from pretrained weights (three; 4 to 11 points at 100 epochs), the kind users
have; a random consistent subset did as well as even spacing there (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from ultralytics.nn.modules.block import C2PSA, C3, Attention, C2f
from ultralytics.nn.modules.conv import Concat

from . import report
from .channels import Plan, evenly_spaced, head_channels, importance_plan
from .classes import class_pairs, name_list
from .config import KDConfig
from .hooks import find_detect_head

BLOCK_CHOICES = ("first", "even")
CHANNEL_CHOICES = ("auto", "importance", "even")
_CONCATENATED = (C2f,)  # every block's output is a chunk of the output conv's input (C2f, C3k2, C2fPSA, C2fCIB)
_CHAINED = (C3, C2PSA)  # blocks form one chain; only the last one's output leaves the layer


@dataclass
class Selection:
    """Where each student tensor comes from in the teacher.

    Attributes:
        keys: Student state-dict key -> teacher state-dict key (differs where a deeper teacher's block was chosen).
        index: Student key -> {dimension: teacher indices}; a dimension not listed is evenly spaced.
        skipped: Names of the teacher's repeated blocks that no student block inherits.
        outputs: Layer index -> the teacher output channels that layer's student output stands for.
        channels: How the channels were chosen: ``"importance"`` or ``"even"``.
        fallback: Why importance was asked for but channels are evenly spaced (a layer ``channels.py`` does not
            trace), else None.
    """

    keys: dict[str, str]
    index: Plan = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    channels: str = "even"
    fallback: str | None = None


def chosen_blocks(n_teacher: int, n_student: int, blocks: str = "first") -> list[int]:
    """The teacher blocks that a layer's ``n_student`` repeated blocks inherit, in order.

    Args:
        n_teacher: Repeated blocks in the teacher's layer.
        n_student: Repeated blocks in the student's layer (at most ``n_teacher``).
        blocks: ``"first"`` (the first ``n_student``) or ``"even"`` (evenly spaced, the first always kept).

    Returns:
        Teacher block indices, increasing.
    """
    if blocks == "first":
        return list(range(n_student))
    return evenly_spaced(n_teacher, n_student).tolist()


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
    """Keep whole heads (``channels.head_channels``).

    ``proj``'s outputs join the residual stream and keep the even spacing of every other layer.
    """
    qkv_rows, v_channels = head_channels(s, t)
    plan: Plan = {f"{name}.proj.conv.weight": {1: v_channels}}  # proj's outputs (and its BN): even spacing
    for conv, rows in (("qkv", qkv_rows), ("pe", v_channels)):  # output rows of the conv and of its BN
        for key in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            plan[f"{name}.{conv}.{key}"] = {0: rows}
    return plan


def _depth_map(student: nn.Module, teacher: nn.Module, blocks: str) -> tuple[dict[str, str], Plan, list[str]] | str:
    """Block renames (student prefix -> teacher prefix), C2f output-conv inputs, skipped blocks; or why not."""
    t_modules = dict(teacher.named_modules())
    renames: dict[str, str] = {}
    plan: Plan = {}
    skipped: list[str] = []
    for name, module in student.named_modules():
        t_module = t_modules.get(name)
        inner = getattr(module, "m", None)
        if not isinstance(inner, (nn.ModuleList, nn.Sequential)) or t_module is None:
            continue
        n_s, n_t = len(inner), len(t_module.m)
        kinds = {type(b).__name__ for b in inner}, {type(b).__name__ for b in t_module.m}
        if kinds[0] != kinds[1]:
            return (
                f"{name} holds {'/'.join(sorted(kinds[0]))} blocks in the student and {'/'.join(sorted(kinds[1]))} in "
                "the teacher: blocks of another kind cannot be selected into each other"
            )
        if n_s == n_t:
            continue
        if n_s > n_t:
            return f"{name} has {n_s} blocks in the student but only {n_t} in the teacher"
        if not isinstance(module, (*_CONCATENATED, *_CHAINED)):
            return f"{name} ({type(module).__name__}) repeats its blocks in a way the depth selection does not handle"
        chosen = chosen_blocks(n_t, n_s, blocks)
        renames.update({f"{name}.m.{j}.": f"{name}.m.{k}." for j, k in enumerate(chosen)})
        skipped += [f"{name}.m.{k}" for k in range(n_t) if k not in chosen]
        if isinstance(module, _CONCATENATED):  # output conv input: [y0, y1, block 0, block 1, ...], c channels each
            c_s, c_t = module.c, t_module.c
            within = evenly_spaced(c_t, c_s)
            chunks = [0, 1] + [2 + k for k in chosen]
            plan[f"{name}.cv2.conv.weight"] = {1: torch.cat([k * c_t + within for k in chunks])}
    return renames, plan, skipped


def _layer_channels(model: nn.Module) -> tuple[list[int | None], dict[str, list[int]]]:
    """Each layer's output channels, and which layer inputs (by position in the layer's input list) each conv reads.

    A probe forward pass in eval mode (nothing is updated) records the tensors; a conv "reads" a layer input when its
    own input is that very tensor object.
    """
    layers = list(model.model)
    outputs: list[int | None] = [None] * len(layers)
    inputs: dict[int, list[torch.Tensor]] = {}
    reads: dict[str, list[int]] = {}
    conv_in: dict[str, torch.Tensor] = {}
    names = {id(m): n for n, m in model.named_modules()}
    handles = []
    for i, layer in enumerate(layers):

        def pre(m: nn.Module, args: tuple, i: int = i) -> None:
            x = args[0]
            inputs[i] = list(x) if isinstance(x, (list, tuple)) else [x]

        def post(m: nn.Module, args: tuple, out: object, i: int = i) -> None:
            outputs[i] = out.shape[1] if isinstance(out, torch.Tensor) else None

        handles += [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_pre_hook(lambda m, a: conv_in.setdefault(names[id(m)], a[0])))
    was_training = model.training
    model.eval()
    p = next(model.parameters())  # the first conv's weight: the probe takes its input channels, device and dtype
    try:
        with torch.no_grad():
            model(torch.zeros(1, p.shape[1], 64, 64, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for name, x in conv_in.items():
        i = int(name.split(".")[1])  # "model.<i>.<...>"
        hits = [j for j, t in enumerate(inputs.get(i, [])) if t is x]
        if hits:
            reads[name] = hits
    return outputs, reads


def _concat_plan(student: nn.Module, teacher: nn.Module) -> tuple[Plan, dict[int, torch.Tensor]]:
    """Input channels of convs that read a concatenation whose parts shrink by different factors.

    Every layer keeps the evenly spaced channels of its output; a Concat keeps each part's kept channels at that
    part's offset in the teacher's concatenation. Where the parts shrink by one factor this equals even spacing over
    the whole; where they do not (a yolov8m teacher caps its widths at 768, yolov8n at 1024), the convs that read the
    concatenation must take the part-wise channels, or a layer's kept inputs would not be the kept outputs.
    """
    s_out, reads = _layer_channels(student)
    t_out, _ = _layer_channels(teacher)
    kept: dict[int, torch.Tensor] = {}
    plan: Plan = {}
    for i, layer in enumerate(student.model):
        sources = [layer.f] if isinstance(layer.f, int) else list(layer.f)
        sources = [i + f if f < 0 else f for f in sources]
        if isinstance(layer, Concat):
            parts, offset = [], 0
            for f in sources:
                parts.append(kept[f] + offset)
                offset += t_out[f]
            kept[i] = torch.cat(parts)
        elif not any(True for _ in layer.parameters()) and len(sources) == 1 and sources[0] in kept:
            kept[i] = kept[sources[0]]  # Upsample and the like: channels pass through
        elif s_out[i] is not None and t_out[i] is not None:
            kept[i] = evenly_spaced(t_out[i], s_out[i])
    for name, positions in reads.items():
        layer = student.model[int(name.split(".")[1])]
        sources = [layer.f] if isinstance(layer.f, int) else list(layer.f)
        index = int(name.split(".")[1])
        for pos in positions:
            f = sources[pos]
            f = index + f if f < 0 else f
            if f in kept and not torch.equal(kept[f], evenly_spaced(t_out[f], s_out[f])):
                plan[f"{name}.weight"] = {1: kept[f]}
    return plan, kept


def _teacher_key(key: str, renames: dict[str, str]) -> str:
    """The teacher key of a student key: the longest renamed block prefix it starts with is replaced."""
    for prefix in sorted((p for p in renames if key.startswith(p)), key=len, reverse=True)[:1]:
        return renames[prefix] + key[len(prefix) :]
    return key


def teacher_start(teacher: nn.Module) -> str | None:
    """What the teacher's training started from, as its checkpoint's ``train_args`` record it.

    Args:
        teacher: A teacher loaded as Ultralytics loads checkpoints (its ``args`` are the ``train_args``).

    Returns:
        ``"scratch"`` (a model YAML without weights), ``"weights"`` (a ``.pt``, or ``pretrained=`` a file), or None
        when it is not recorded: no ``train_args``, or a resumed run, whose ``model`` names its own ``last.pt``.
    """
    args = getattr(teacher, "args", None)
    if not isinstance(args, dict) or args.get("resume") or not args.get("model"):
        return None
    if isinstance(args.get("pretrained"), str) or not str(args["model"]).endswith((".yaml", ".yml")):
        return "weights"
    return "scratch"


def channel_choice(channels: str, teacher: nn.Module) -> tuple[str, str]:
    """Resolve ``channels="auto"``: importance for a teacher trained from scratch, evenly spaced for any other.

    The rule is what the measurements found (docs/BENCHMARKS.md): importance won from all four teachers trained from
    scratch and lost from all three fine-tuned from pretrained weights; where the start is not recorded, evenly
    spaced channels, weight selection's rule, are kept.

    Args:
        channels: ``kd_init_channels`` (``CHANNEL_CHOICES``).
        teacher: The teacher (``teacher_start`` reads its ``train_args``).

    Returns:
        ``"importance"`` or ``"even"``, and why, in words for the log.
    """
    if channels != "auto":
        return channels, f"kd_init_channels={channels}"
    start = teacher_start(teacher)
    if start == "scratch":
        return "importance", "auto: the teacher was trained from scratch"
    if start == "weights":
        return "even", "auto: the teacher was trained from pretrained weights"
    return "even", "auto: the teacher's checkpoint does not record how its training started"


def selection(student: nn.Module, teacher: nn.Module, blocks: str = "first", channels: str = "even") -> Selection | str:
    """Where every student tensor comes from in the teacher, or why the pair cannot be selected.

    Args:
        student: The student model (unfused).
        teacher: The teacher model (unfused), of the same family: as wide or wider, as deep or deeper.
        blocks: How a shallower student's repeated blocks choose among the teacher's (``BLOCK_CHOICES``).
        channels: How a narrower student's channels choose among the teacher's (``CHANNEL_CHOICES``): the teacher's
            most important (``channels.importance_plan``; even spacing where it does not trace a layer), evenly
            spaced, or ``"auto"`` (``channel_choice``).

    Returns:
        The ``Selection``, or a one-line reason.
    """
    if blocks not in BLOCK_CHOICES:
        raise ValueError(f"blocks={blocks!r}; choose one of {BLOCK_CHOICES}")
    if channels not in CHANNEL_CHOICES:
        raise ValueError(f"channels={channels!r}; choose one of {CHANNEL_CHOICES}")
    channels = channel_choice(channels, teacher)[0]
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    s_reg, t_reg = (getattr(find_detect_head(m), "reg_max", None) for m in (student, teacher))
    if s_reg != t_reg:
        return f"reg_max differs (student {s_reg}, teacher {t_reg}): box bins would not match"
    s_in, t_in = (next(m.parameters()).shape[1] for m in (student, teacher))
    if s_in != t_in:  # the first conv's input channels: slicing them would keep, say, the red filters for gray
        return f"their input channels differ (student {s_in}, teacher {t_in}): the images they see differ"
    s_layers, t_layers = list(getattr(student, "model", [])), list(getattr(teacher, "model", []))
    kinds = [(i, type(a).__name__, type(b).__name__) for i, (a, b) in enumerate(zip(s_layers, t_layers))]
    other = next(((i, a, b) for i, a, b in kinds if a != b), None)
    if len(s_layers) != len(t_layers) or other is not None:
        where = f"layer {other[0]} is a {other[1]} in the student, a {other[2]} in the teacher" if other else "depth"
        return f"their layers differ ({where}): another family"
    depth = _depth_map(student, teacher, blocks)
    if isinstance(depth, str):
        return depth
    renames, plan, skipped = depth
    keys = {k: _teacher_key(k, renames) for k in s_sd}
    missing = sum(t not in t_sd for t in keys.values())
    if missing:
        return f"their layers differ ({missing} student tensors have no teacher counterpart: another family)"
    by_class = class_output_keys(student)  # class rows are copied by class: the student may have more classes
    for key, s_t in s_sd.items():
        t, rows = t_sd[keys[key]], 1 if key in by_class else 0
        if t.ndim != s_t.ndim or any(t.shape[d] < n for d, n in enumerate(s_t.shape) if d >= rows):
            return f"{key}: teacher {tuple(t.shape)} is not at least the student's {tuple(s_t.shape)}"
    concat, outputs = _concat_plan(student, teacher)
    plan.update(concat)
    t_modules = dict(teacher.named_modules())
    for name, module in student.named_modules():
        t_name = _teacher_key(f"{name}.", renames)[:-1] if name else name
        if isinstance(module, Attention):
            plan.update(_attention_plan(name, module, t_modules[t_name]))
        elif hasattr(module, "num_heads"):  # an attention layout not handled here (AAttn, nn.MultiheadAttention...)
            return f"{name} ({type(module).__name__}) has a head layout weight selection does not handle"
    # the even plan above is built under importance too: its checks (attention layouts, families) refuse for both
    if channels == "even":
        return Selection(keys, plan, skipped, outputs)
    important = importance_plan(student, teacher, keys)
    if isinstance(important, str):
        return Selection(keys, plan, skipped, outputs, fallback=important)
    return Selection(keys, important[0], skipped, important[1], channels="importance")


def selection_plan(student: nn.Module, teacher: nn.Module, blocks: str = "first", channels: str = "even") -> Plan | str:
    """The planned teacher indices (``selection(...).index``; other dimensions are evenly spaced), or why not."""
    chosen = selection(student, teacher, blocks, channels)
    return chosen if isinstance(chosen, str) else chosen.index


def inherit_weights(
    student: nn.Module,
    teacher: nn.Module,
    class_pairs: list[tuple[int, int]],
    blocks: str = "first",
    channels: str = "even",
) -> str | None:
    """Overwrite ``student``'s weights in place with slices of ``teacher``'s.

    Every parameter and buffer (normalisation statistics included) is taken from the teacher tensor of the same
    name, or, in a layer where the teacher repeats its block more often, of the chosen teacher block (``blocks``),
    keeping along each dimension that shrinks the teacher's most important channels (``channels="importance"``) or
    ``floor(i * n_t / n_s)`` (``"even"``; whole heads in attention blocks, the inherited blocks' chunks in C2f output
    convs, see ``selection``). Class-score rows are copied by class (``class_pairs``: (student index, teacher
    index)); a student class without a teacher class keeps its own init.

    Args:
        student: The freshly built student; changed only when the whole selection succeeds.
        teacher: An unfused teacher of the same family (``reg_max`` too), at least as wide and as deep.
        class_pairs: Student and teacher class indices that match.
        blocks: Which teacher blocks a shallower student inherits: ``"first"`` or ``"even"`` (``chosen_blocks``).
        channels: Which teacher channels a narrower student inherits: ``"importance"``, ``"even"`` or ``"auto"``.

    Returns:
        None when the student was initialised, otherwise why not (the student is then untouched).
    """
    chosen = selection(student, teacher, blocks, channels)
    if isinstance(chosen, str):
        return chosen
    if chosen.fallback is not None:
        report.log_channels_fallback(chosen.fallback)
    plan = chosen.index
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    cls_keys = class_output_keys(student)
    new = {}
    for key, s in s_sd.items():
        t = t_sd[chosen.keys[key]].detach().to("cpu", torch.float32)
        by_class = key in cls_keys
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


def init_student(student: nn.Module, teacher: nn.Module | None, student_names: list[str], cfg: KDConfig) -> str:
    """Apply ``kd_init`` to a student built without weights, and log the outcome.

    Args:
        student: The freshly built student.
        teacher: The unfused teacher, or None when there is none to inherit from.
        student_names: The dataset's class names (the student's classes).
        cfg: The run's KD settings (``kd_init``, ``kd_init_blocks``, ``kd_init_channels``, ``kd_class_map``).

    Returns:
        How the student starts, in words: "the teacher's weights" or "a random init".
    """
    if cfg.kd_init == "random" or teacher is None:
        return "a random init"
    pairs = class_pairs(student_names, name_list(teacher.names), cfg.kd_class_map)
    channels, why = channel_choice(cfg.kd_init_channels, teacher)
    reason = inherit_weights(student, teacher, pairs, blocks=cfg.kd_init_blocks, channels=channels)
    kept = "the most important channels" if channels == "importance" else "evenly spaced channels"
    report.log_init(reason, f"{kept} ({why})")
    return "the teacher's weights" if reason is None else "a random init"

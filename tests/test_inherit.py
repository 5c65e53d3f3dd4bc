"""Weight selection: a from-scratch student starting from the teacher's weights (kd_init)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ultralytics.nn.modules.block import Attention, C2f, PSABlock
from ultralytics.nn.tasks import DetectionModel, load_checkpoint, yaml_model_load

from tests.conftest import tiny_trainer
from yolo_kd.channels import top_channels
from yolo_kd.cli import parse_pairs
from yolo_kd.config import INIT_CHANNELS, KDConfigError, load_kd_config
from yolo_kd.inherit import (
    CHANNEL_CHOICES,
    Selection,
    channel_choice,
    chosen_blocks,
    class_output_keys,
    evenly_spaced,
    inherit_weights,
    init_student,
    selection,
    selection_plan,
)

SELECTED = ("importance", "even")  # the two selections; kd_init_channels=auto picks one of them


def _model(cfg: str | dict, nc: int = 3, seed: int = 0) -> DetectionModel:
    torch.manual_seed(seed)
    return DetectionModel(cfg, nc=nc, verbose=False)


def _trained_looking(model: DetectionModel) -> DetectionModel:
    """Give every normalisation layer distinct scales and non-trivial statistics, as training does: a fresh model's
    scales are all 1, and importance would then have nothing to rank."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.1, 1.1)
            m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    return model


def test_evenly_spaced_by_hand() -> None:
    assert evenly_spaced(8, 4).tolist() == [0, 2, 4, 6]
    assert evenly_spaced(5, 2).tolist() == [0, 2]  # floor(1 * 5 / 2)
    assert evenly_spaced(6, 6).tolist() == list(range(6))
    # blocks of a concatenation stay aligned: student block j (size 2) maps into teacher block j (size 5)
    assert evenly_spaced(15, 6).tolist() == [0, 2, 5, 7, 10, 12]


def test_same_width_teacher_is_copied_exactly() -> None:
    student, teacher = _model("yolov8n.yaml", seed=0), _model("yolov8n.yaml", seed=1)
    assert inherit_weights(student, teacher, [(0, 0), (1, 1), (2, 2)]) is None
    x = torch.rand(1, 3, 64, 64)
    student.eval(), teacher.eval()
    with torch.no_grad():
        assert torch.equal(student(x)[0], teacher(x)[0])


def test_init_student_follows_kd_init_and_names_classes() -> None:
    teacher = _model("yolov8s.yaml", nc=2, seed=1)
    teacher.names = {0: "circle", 1: "square"}
    random_cfg, teacher_cfg = load_kd_config(kd_init="random"), load_kd_config(kd_init="teacher")
    student = _model("yolov8n.yaml", nc=2)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    assert init_student(student, teacher, ["square", "circle"], random_cfg) == "a random init"
    assert init_student(student, None, ["square", "circle"], teacher_cfg) == "a random init"
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert init_student(student, teacher, ["square", "circle"], teacher_cfg) == "the teacher's weights"
    cls_b = "model.22.cv3.0.2.bias"  # classes matched by name: student 0 (square) is teacher 1
    assert torch.equal(student.state_dict()[cls_b], teacher.state_dict()[cls_b][[1, 0]])


def test_top_channels_by_hand() -> None:
    assert top_channels(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2).tolist() == [1, 3]  # the largest two, in order
    assert top_channels(torch.tensor([0.3, 0.2]), 2).tolist() == [0, 1]


def test_channel_choices_agree_with_the_config() -> None:
    assert INIT_CHANNELS == CHANNEL_CHOICES and load_kd_config().kd_init_channels == "auto"


@pytest.mark.parametrize(
    ("train_args", "choice"),
    [
        ({"model": "yolov8m.yaml", "pretrained": True}, "importance"),  # YOLO("yolov8m.yaml").train(...)
        ({"model": "cfg/my_v8m.yml", "pretrained": False}, "importance"),
        ({"model": "yolov8m.pt", "pretrained": True}, "even"),  # fine-tuned from COCO weights, the users' kind
        ({"model": "yolov8m.yaml", "pretrained": "weights/source.pt"}, "even"),  # YOLO(yaml).load(pt) / pretrained=
        ({"model": "runs/t/weights/last.pt", "resume": "runs/t/weights/last.pt"}, "even"),  # resumed: start unknown
        ({}, "even"),  # no train_args
    ],
)
def test_auto_channels_follow_how_the_teacher_was_trained(train_args: dict, choice: str) -> None:
    """``kd_init_channels=auto`` reads the teacher's recorded training start, and an explicit choice is kept."""
    teacher = _model("yolov8s.yaml", seed=1)
    teacher.args = train_args
    assert channel_choice("auto", teacher)[0] == choice
    assert channel_choice("even", teacher)[0] == "even" and channel_choice("importance", teacher)[0] == "importance"


def test_auto_channels_select_what_the_resolved_choice_selects() -> None:
    """The selection made with ``auto`` is the one made with the choice it resolves to."""
    student, teacher = _model("yolov8n.yaml"), _trained_looking(_model("yolov8s.yaml", seed=1))
    for train_args, choice in (({"model": "yolov8s.yaml"}, "importance"), ({"model": "yolov8s.pt"}, "even")):
        teacher.args = train_args
        auto, chosen = selection(student, teacher, channels="auto"), selection(student, teacher, channels=choice)
        assert all(torch.equal(auto.index[k][d], chosen.index[k][d]) for k in chosen.index for d in chosen.index[k])
        assert auto.index.keys() == chosen.index.keys()


def test_importance_keeps_the_teachers_largest_scales_by_hand() -> None:
    student, teacher = _model("yolov8n.yaml"), _trained_looking(_model("yolov8s.yaml", seed=1))
    gamma = torch.zeros(32)
    gamma[[3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 30, 31]] = 1.0  # layer 0: 16 of 32 filters matter
    teacher.model[0].bn.weight.data = gamma
    assert inherit_weights(student, teacher, [(0, 0)], channels="importance") is None
    s, t = student.state_dict(), teacher.state_dict()
    kept = gamma.nonzero().flatten()
    assert torch.equal(s["model.0.conv.weight"], t["model.0.conv.weight"][kept])
    assert torch.equal(s["model.0.bn.weight"], t["model.0.bn.weight"][kept])
    # the next conv reads exactly those channels, and keeps its own most important filters
    rows = top_channels(t["model.1.bn.weight"].abs(), 32)
    assert torch.equal(s["model.1.conv.weight"], t["model.1.conv.weight"][rows][:, kept])


def test_importance_scores_each_channel_space_by_hand() -> None:
    """Beyond the first convs: C2f's y0 half, its residual stream (cv1's y1 half plus every kept block's last scales),
    a bottleneck's hidden channels, SPPF's pooled channels and a Detect branch each keep their own largest scales."""
    student, teacher = _model("yolov8n.yaml"), _trained_looking(_model("yolov8m.yaml", seed=1))
    plan, t = selection_plan(student, teacher, channels="importance"), teacher.state_dict()
    assert isinstance(plan, dict), plan

    def gamma(conv: str) -> torch.Tensor:
        return t[f"{conv}.bn.weight"].abs()

    c_t, c_s = 96, 32  # layer 4 (C2f, shortcuts): teacher chunk width, student chunk width; 4 teacher blocks, 2 kept
    first = gamma("model.4.cv1")
    y0 = top_channels(first[:c_t], c_s)
    stream = top_channels(first[c_t:] + gamma("model.4.m.0.cv2") + gamma("model.4.m.1.cv2"), c_s)  # blocks 0, 1
    assert torch.equal(plan["model.4.cv1.conv.weight"][0], torch.cat([y0, c_t + stream]))
    assert torch.equal(plan["model.4.m.1.cv2.conv.weight"][0], stream)  # a residual block keeps the stream's channels
    assert torch.equal(plan["model.4.m.1.cv1.conv.weight"][0], top_channels(gamma("model.4.m.1.cv1"), c_s))
    assert not torch.equal(stream, top_channels(first[c_t:], c_s))  # the blocks' scales do count
    assert torch.equal(plan["model.9.cv1.conv.weight"][0], top_channels(gamma("model.9.cv1"), 128))  # SPPF
    assert torch.equal(plan["model.22.cv3.1.0.conv.weight"][0], top_channels(gamma("model.22.cv3.1.0"), 64))
    assert torch.equal(plan["model.22.cv3.1.0.conv.weight"][1], plan["model.18.cv2.conv.weight"][0])  # reads P4


def test_importance_scores_yolo11_spaces_by_hand() -> None:
    """yolo11's own kinds: a C3k block's residual stream (its cv1 plus both bottlenecks' last scales) and its cv2 half,
    C2PSA's stream through an attention block (cv1's y1 half plus the attention and feed-forward outputs), and a
    depthwise conv in a Detect branch, whose outputs are its inputs."""
    student, teacher = _model("yolo11n.yaml"), _trained_looking(_model("yolo11s.yaml", seed=1))
    plan, t = selection_plan(student, teacher, channels="importance"), teacher.state_dict()
    assert isinstance(plan, dict), plan

    def gamma(conv: str) -> torch.Tensor:
        return t[f"{conv}.bn.weight"].abs()

    c3k = "model.6.m.0"  # C3k2's block: a C3k with 32 hidden channels (the teacher 64), two shortcut bottlenecks
    stream = top_channels(gamma(f"{c3k}.cv1") + gamma(f"{c3k}.m.0.cv2") + gamma(f"{c3k}.m.1.cv2"), 32)
    assert torch.equal(plan[f"{c3k}.cv1.conv.weight"][0], stream)
    assert torch.equal(plan[f"{c3k}.m.1.cv2.conv.weight"][0], stream)
    half = top_channels(gamma(f"{c3k}.cv2"), 32)
    assert torch.equal(plan[f"{c3k}.cv3.conv.weight"][1], torch.cat([stream, 64 + half]))
    y1 = plan["model.6.cv1.conv.weight"][0][64:] - 128  # C2f hands its block the y1 chunk as a tensor of its own
    assert torch.equal(plan[f"{c3k}.cv1.conv.weight"][1], y1) and torch.equal(plan[f"{c3k}.cv2.conv.weight"][1], y1)
    c_t, c_s = 256, 128  # layer 10 (C2PSA): teacher and student halves
    first = gamma("model.10.cv1")
    y1 = top_channels(first[c_t:] + gamma("model.10.m.0.attn.proj") + gamma("model.10.m.0.ffn.1"), c_s)
    assert torch.equal(plan["model.10.cv1.conv.weight"][0], torch.cat([top_channels(first[:c_t], c_s), c_t + y1]))
    assert torch.equal(plan["model.10.m.0.attn.qkv.conv.weight"][1], y1)
    assert torch.equal(plan["model.10.cv2.conv.weight"][1], plan["model.10.cv1.conv.weight"][0])  # [y0 | stream]
    dw, p3 = plan["model.23.cv3.0.0.0.conv.weight"], plan["model.16.cv2.conv.weight"][0]
    assert list(dw) == [0] and torch.equal(dw[0], p3)  # depthwise: P3's channels, one input each
    assert torch.equal(plan["model.23.cv3.0.0.1.conv.weight"][1], p3)


def test_importance_falls_back_to_even_spacing_where_it_does_not_trace() -> None:
    chosen = selection(_model("yolov8n-ghost.yaml"), _model("yolov8s-ghost.yaml"), channels="importance")
    assert chosen.channels == "even" and chosen.fallback == "layer 1 is a GhostConv"
    for pair in (("yolov8n", "yolov8s"), ("yolo11n", "yolo11s"), ("yolo26n", "yolo26s")):
        chosen = selection(*(_model(f"{cfg}.yaml") for cfg in pair), channels="importance")
        assert chosen.channels == "importance" and chosen.fallback is None, pair
    with pytest.raises(KDConfigError, match="kd_init_channels='random'"):
        load_kd_config(kd_init_channels="random")


def test_wider_teacher_is_sliced_evenly_and_classes_copied_by_class() -> None:
    student, teacher = _model("yolov8n.yaml", nc=3), _model("yolov8s.yaml", nc=4, seed=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    pairs = [(0, 3), (1, 0)]  # student class 2 has no teacher class
    assert inherit_weights(student, teacher, pairs, channels="even") is None
    s, t = student.state_dict(), teacher.state_dict()
    assert torch.equal(s["model.0.conv.weight"], t["model.0.conv.weight"][::2])  # 16 of 32 filters, 3 inputs
    assert torch.equal(s["model.1.conv.weight"], t["model.1.conv.weight"][::2, ::2])
    assert torch.equal(s["model.1.bn.running_var"], t["model.1.bn.running_var"][::2])
    cls_w = "model.22.cv3.0.2.weight"
    assert cls_w in class_output_keys(student)
    assert torch.equal(s[cls_w][0], t[cls_w][3, ::2]) and torch.equal(s[cls_w][1], t[cls_w][0, ::2])
    assert torch.equal(s[cls_w][2], before[cls_w][2])  # unmatched class keeps its own init
    assert torch.equal(s["model.22.cv3.0.2.bias"][:2], t["model.22.cv3.0.2.bias"][[3, 0]])


SAME_DEPTH_PAIRS = [
    ("yolov8n.yaml", "yolov8s.yaml"),
    pytest.param("yolov8l.yaml", "yolov8x.yaml", marks=pytest.mark.slow),  # the widest models: seconds
    ("yolo11n.yaml", "yolo11s.yaml"),  # C2PSA attention: heads kept whole
    ("yolo26n.yaml", "yolo26s.yaml"),  # end-to-end head with its one-to-one branch
]


@pytest.mark.parametrize("channels", SELECTED)
@pytest.mark.parametrize(("student_cfg", "teacher_cfg"), SAME_DEPTH_PAIRS)
def test_selection_is_consistent_through_every_layer(student_cfg: str, teacher_cfg: str, channels: str) -> None:
    """With the teacher's unselected input channels zeroed, the student must compute the teacher's selected channels.

    That holds only if every layer's kept inputs are exactly the previous layer's kept outputs: through C2f/C3k2
    chunks, SPPF and neck concatenations, attention heads and the Detect branches.
    """
    student, teacher = _model(student_cfg), _trained_looking(_model(teacher_cfg, seed=1))
    chosen, s_sd = selection(student, teacher, channels=channels), student.state_dict()
    assert not isinstance(chosen, str), chosen
    assert chosen.channels == channels, chosen.fallback
    plan = chosen.index
    with torch.no_grad():
        for key, t in teacher.state_dict().items():
            if t.ndim >= 2 and (t.shape[1] != s_sd[key].shape[1] or 1 in plan.get(key, {})):
                keep = plan.get(key, {}).get(1, evenly_spaced(t.shape[1], s_sd[key].shape[1]))
                dropped = torch.ones(t.shape[1], dtype=torch.bool)
                dropped[keep] = False
                t[:, dropped] = 0
    assert inherit_weights(student, teacher, [(0, 0), (1, 1), (2, 2)], channels=channels) is None
    _assert_layers_match(student, teacher, chosen)


def _assert_layers_match(student: DetectionModel, teacher: DetectionModel, chosen: Selection) -> None:
    """Every layer of the student computes the kept channels of the same teacher layer (``chosen.outputs``, else
    evenly spaced), every Detect branch (end-to-end copies too) the channels its last conv reads, and the detections
    match."""
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    for side, model in (("s", student), ("t", teacher)):
        for i, layer in enumerate(model.model):
            layer.register_forward_hook(lambda m, a, out, i=i, side=side: outputs.setdefault(i, {}).update({side: out}))
            layer.register_forward_pre_hook(
                lambda m, a, i=i, side=side: outputs.setdefault(f"{i} in", {}).update({side: a[0]})
            )
    student.eval(), teacher.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        s_out, t_out = student(x), teacher(x)
    for i in range(len(student.model) - 1):
        s, t = outputs[i]["s"], outputs[i]["t"]
        t = t.index_select(1, chosen.outputs.get(i, evenly_spaced(t.shape[1], s.shape[1])))
        assert torch.allclose(s, t, rtol=1e-3, atol=1e-4), f"layer {i} ({type(student.model[i]).__name__})"
    # each branch up to its last conv, run directly: the class scores (sigmoid of about -8 at init) and the end-to-end
    # copies (not in an eval forward's output) would hide a wrong choice from the detections
    n, (s_head, t_head) = len(student.model) - 1, (student.model[-1], teacher.model[-1])
    s_in, t_in = outputs[f"{n} in"]["s"], outputs[f"{n} in"]["t"]
    for name in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
        for level, (s_seq, t_seq) in enumerate(zip(getattr(s_head, name, None) or [], getattr(t_head, name, []))):
            with torch.no_grad():
                s, t = s_seq[:-1](s_in[level]), t_seq[:-1](t_in[level])
            key = f"model.{n}.{name}.{level}.{len(s_seq) - 1}.weight"
            t = t.index_select(1, chosen.index.get(key, {}).get(1, evenly_spaced(t.shape[1], s.shape[1])))
            assert torch.allclose(s, t, rtol=1e-3, atol=1e-4), key
    s_out, t_out = (o[0] if isinstance(o, (tuple, list)) else o for o in (s_out, t_out))
    assert torch.allclose(s_out, t_out, rtol=1e-3, atol=1e-3), "detections differ"


def test_attention_keeps_whole_heads() -> None:
    student, teacher = _model("yolo11n.yaml"), _model("yolo11s.yaml")
    plan = selection_plan(student, teacher)
    attn = next(m for m in teacher.modules() if isinstance(m, Attention))
    s_attn = next(m for m in student.modules() if isinstance(m, Attention))
    assert (attn.num_heads, s_attn.num_heads, attn.key_dim, attn.head_dim) == (4, 2, 32, 64)
    rows = plan["model.10.m.0.attn.qkv.conv.weight"][0]
    # teacher heads 0 and 2 whole: each its 32 q, 32 k and 64 v channels (128 per head)
    assert rows.tolist() == list(range(0, 128)) + list(range(256, 384))
    assert plan["model.10.m.0.attn.proj.conv.weight"][1].tolist() == list(range(0, 64)) + list(range(128, 192))


def test_unhandled_attention_and_other_reg_max_are_refused() -> None:
    reason = inherit_weights(_model("yolo12n.yaml"), _model("yolo12s.yaml"), [(0, 0)])
    assert reason is not None and "head layout" in reason
    cfg = {**yaml_model_load("yolov8n.yaml"), "reg_max": 8}
    reason = inherit_weights(_model(cfg), _model("yolov8s.yaml"), [(0, 0)])
    assert reason is not None and "reg_max differs" in reason


def _scaled(cfg: str, depth: float, width: float) -> dict:
    """``cfg`` at other depth and width multiples, its C3k2 layers with plain blocks: a skipped C3k (no shortcut)
    cannot be made an identity, which the deeper-teacher test needs when it skips blocks between chosen ones."""
    d = yaml_model_load(cfg)
    d["scales"] = {d["scale"]: [depth, width, 1024]}
    for layer in d["backbone"] + d["head"]:
        if layer[2] == "C3k2" and len(layer[3]) > 1:
            layer[3][1] = False
    return d


DEEPER_PAIRS = [
    ("yolov8n.yaml", "yolov8m.yaml"),  # C2f: 1-2 bottlenecks against 2-4; widths capped at 768 against 1024
    pytest.param("yolov8n.yaml", "yolov8x.yaml", marks=pytest.mark.slow),  # the mission's pair: 1-2 against 3-6
    pytest.param("yolov8s.yaml", "yolov8l.yaml", marks=pytest.mark.slow),
    # C3k2 with C3k blocks, and a C2PSA chain of 2 attention blocks against 1
    pytest.param("yolo11m.yaml", "yolo11x.yaml", marks=pytest.mark.slow),
    # 2 blocks against 4, so the even choice renames blocks (m.1 inherits m.2): C3k2, C2PSA's attention chain and,
    # for yolo26, C3k2's attention blocks and the end-to-end head
    pytest.param(_scaled("yolo11s.yaml", 1.0, 0.25), _scaled("yolo11s.yaml", 2.0, 0.5), id="yolo11-depth1-depth2"),
    pytest.param(_scaled("yolo26s.yaml", 1.0, 0.25), _scaled("yolo26s.yaml", 2.0, 0.5), id="yolo26-depth1-depth2"),
]


def _identity_block(block: torch.nn.Module) -> None:
    """Make a residual block compute the identity, by zeroing the last normalisation of each residual branch."""
    if isinstance(block, torch.nn.Sequential):  # C3k2's attention blocks: a Bottleneck, then a PSABlock
        for inner in block:
            _identity_block(inner)
        return
    if isinstance(block, PSABlock):
        last = (block.attn.proj.bn, block.ffn[-1].bn)
    else:
        assert getattr(block, "add", False), f"{type(block).__name__} has no shortcut: it cannot be skipped exactly"
        last = (block.cv2.bn,)
    for bn in last:  # act(BN(x)) with weight, bias and mean 0 is act(0) = 0 for SiLU and identity
        bn.weight.data.zero_(), bn.bias.data.zero_(), bn.running_mean.zero_()


@pytest.mark.parametrize("channels", SELECTED)
@pytest.mark.parametrize("blocks", ["first", "even"])
@pytest.mark.parametrize(("student_cfg", "teacher_cfg"), DEEPER_PAIRS)
def test_deeper_teacher_selection_is_consistent_through_every_layer(
    student_cfg: str | dict, teacher_cfg: str | dict, blocks: str, channels: str
) -> None:
    """With the teacher's unselected channels zeroed and its skipped blocks made identities, every student layer must
    compute the teacher layer's selected channels: the chosen blocks' weights, their chunks in C2f's output conv and
    the chain through skipped residual blocks all line up."""
    student, teacher = _model(student_cfg), _trained_looking(_model(teacher_cfg, seed=1))
    chosen = selection(student, teacher, blocks, channels)
    assert not isinstance(chosen, str), chosen
    assert chosen.channels == channels, chosen.fallback
    assert chosen.skipped, "a deeper teacher must have blocks no student block inherits"
    t_modules, inherited = dict(teacher.named_modules()), set(chosen.keys.values())
    for name in chosen.skipped:
        layer, k = name.rsplit(".m.", 1)
        later = any(key.startswith(f"{layer}.m.{j}.") for key in inherited for j in range(int(k) + 1, 99))
        # a skipped block must pass its input on unchanged where a chosen block or the layer's output follows it in
        # the chain; a C2f block after the last chosen one feeds only its own (dropped) chunk of the output conv
        if later or not isinstance(t_modules[layer], C2f):
            _identity_block(t_modules[name])
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    with torch.no_grad():
        for s_key, t_key in chosen.keys.items():
            t, s = t_sd[t_key], s_sd[s_key]
            if t.ndim >= 2 and (t.shape[1] != s.shape[1] or 1 in chosen.index.get(s_key, {})):
                keep = chosen.index.get(s_key, {}).get(1, evenly_spaced(t.shape[1], s.shape[1]))
                dropped = torch.ones(t.shape[1], dtype=torch.bool)
                dropped[keep] = False
                t[:, dropped] = 0
    assert inherit_weights(student, teacher, [(0, 0), (1, 1), (2, 2)], blocks=blocks, channels=channels) is None
    _assert_layers_match(student, teacher, chosen)


def test_block_choice_by_hand() -> None:
    assert chosen_blocks(6, 2, "first") == [0, 1] and chosen_blocks(6, 2, "even") == [0, 3]
    assert chosen_blocks(3, 1, "even") == [0]
    chosen = selection(_model("yolov8n.yaml"), _model("yolov8x.yaml"), "even", channels="even")
    assert chosen.keys["model.4.m.1.cv1.conv.weight"] == "model.4.m.3.cv1.conv.weight"  # 2 of 6: blocks 0 and 3
    assert "model.4.m.1" in chosen.skipped and "model.4.m.3" not in chosen.skipped
    # the output conv keeps y0, y1 and the chunks of blocks 0 and 3: teacher chunk width 160, student 32
    rows = chosen.index["model.4.cv2.conv.weight"][1]
    assert rows[:2].tolist() == [0, 5] and rows[64:66].tolist() == [320, 325] and rows[96:98].tolist() == [800, 805]


@pytest.mark.parametrize(
    ("student_cfg", "teacher_cfg", "why"),
    [
        ("yolo11n.yaml", "yolo11m.yaml", "blocks of another kind"),  # C3k where the student has plain bottlenecks
        ("yolov8m.yaml", "yolov8s.yaml", "only 1 in the teacher"),  # a shallower teacher
        ("yolov8n.yaml", "yolo11n.yaml", "another family"),
    ],
)
def test_what_cannot_map_is_refused_and_student_untouched(student_cfg: str, teacher_cfg: str, why: str) -> None:
    student, teacher = _model(student_cfg), _model(teacher_cfg)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    reason = inherit_weights(student, teacher, [(0, 0)])
    assert reason is not None and why in reason and "\n" not in reason
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_grayscale_and_half_teachers_are_selected_and_other_input_channels_refused() -> None:
    def gray(cfg: str, seed: int) -> DetectionModel:
        torch.manual_seed(seed)
        return DetectionModel(cfg, ch=1, nc=3, verbose=False)

    student, teacher = gray("yolov8n.yaml", 0), gray("yolov8n.yaml", 1)
    assert inherit_weights(student, teacher, [(0, 0), (1, 1), (2, 2)]) is None  # a channels: 1 dataset
    x = torch.rand(1, 1, 64, 64)
    student.eval(), teacher.eval()
    with torch.no_grad():
        assert torch.equal(student(x)[0], teacher(x)[0])
    assert inherit_weights(_model("yolov8n.yaml"), _model("yolov8s.yaml").half(), [(0, 0)], channels="even") is None

    student = gray("yolov8n.yaml", 0)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    reason = inherit_weights(student, _model("yolov8s.yaml"), [(0, 0)])
    assert reason is not None and "input channels differ (student 1, teacher 3)" in reason and "\n" not in reason
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_narrower_teacher_is_refused() -> None:
    student, teacher = _model("yolov8s.yaml"), _model("yolov8n.yaml")
    reason = inherit_weights(student, teacher, [(0, 0)])
    assert reason is not None and "not at least the student's" in reason


def test_kd_init_values_from_the_cli() -> None:
    assert load_kd_config(**parse_pairs(["kd_init=random"])).kd_init == "random"  # "none" would parse as None


def test_bad_kd_init_value() -> None:
    with pytest.raises(KDConfigError, match="kd_init='xavier'"):
        load_kd_config(kd_init="xavier")


@pytest.mark.slow
def test_trainer_starts_a_yaml_student_from_the_teacher_only(data_yaml: str, teacher_pt: str, tmp_path: Path) -> None:
    teacher, _ = load_checkpoint(teacher_pt)
    conv0 = teacher.state_dict()["model.0.conv.weight"]
    want = conv0[evenly_spaced(conv0.shape[0], conv0.shape[0] // 2)]
    important = conv0[top_channels(teacher.state_dict()["model.0.bn.weight"].abs().float(), conv0.shape[0] // 2)]
    assert not torch.equal(want, important)

    trainer = tiny_trainer(data_yaml, teacher_pt, tmp_path, "even", kd_init_channels="even")
    assert torch.equal(trainer.get_model(cfg="yolov8n.yaml").state_dict()["model.0.conv.weight"], want)

    # the default, kd_init_channels=auto: this teacher was trained from yolov8s.yaml, so its most important channels
    trainer = tiny_trainer(data_yaml, teacher_pt, tmp_path, "init")
    assert torch.equal(trainer.get_model(cfg="yolov8n.yaml").state_dict()["model.0.conv.weight"], important)

    trainer = tiny_trainer(data_yaml, teacher_pt, tmp_path, "noinit", kd_init="random")
    assert not torch.equal(trainer.get_model(cfg="yolov8n.yaml").state_dict()["model.0.conv.weight"], want)

    # a student that comes with weights (pretrained, resumed) keeps them
    own = _model("yolov8n.yaml", nc=len(trainer.data["names"]), seed=3)
    trainer = tiny_trainer(data_yaml, teacher_pt, tmp_path, "pretrained")
    got = trainer.get_model(cfg="yolov8n.yaml", weights=own).state_dict()["model.0.conv.weight"]
    assert torch.equal(got, own.state_dict()["model.0.conv.weight"])


def test_bad_kd_init_blocks_value() -> None:
    with pytest.raises(KDConfigError, match="kd_init_blocks='middle'"):
        load_kd_config(kd_init_blocks="middle")


@pytest.mark.slow
@pytest.mark.parametrize(("blocks", "teacher_block"), [("first", 1), ("even", 2)])
def test_trainer_starts_a_yaml_student_from_a_deeper_teacher(
    data_yaml: str, tmp_path: Path, blocks: str, teacher_block: int
) -> None:
    """yolov8m -> yolov8n through the trainer: the student's second block of layer 4 comes from the teacher's block
    chosen by ``kd_init_blocks`` (the teacher has 4 there, the student 2)."""
    import yaml

    names = yaml.safe_load(Path(data_yaml).read_text())["names"]
    teacher = _model("yolov8m.yaml", nc=len(names), seed=1)
    teacher.names = names
    path = tmp_path / "v8m.pt"
    torch.save({"model": teacher, "train_args": {}}, path)
    trainer = tiny_trainer(
        data_yaml, str(path), tmp_path, f"deep_{blocks}", kd_init_blocks=blocks, kd_init_channels="even"
    )
    student = trainer.get_model(cfg="yolov8n.yaml")
    assert trainer.student_init == "the teacher's weights"
    got = student.state_dict()["model.4.m.1.cv1.conv.weight"]
    want = teacher.state_dict()[f"model.4.m.{teacher_block}.cv1.conv.weight"]
    want = want.index_select(0, evenly_spaced(want.shape[0], got.shape[0]))
    assert torch.equal(got, want.index_select(1, evenly_spaced(want.shape[1], got.shape[1])))


@pytest.mark.slow
def test_grayscale_data_trains_end_to_end_from_a_grayscale_teacher(tmp_path: Path) -> None:
    """``channels: 1`` data, a 1-channel teacher: the YAML student is built with 1 channel, starts from the teacher,
    trains with the KD terms, and its checkpoint predicts a grayscale image with plain Ultralytics."""
    import csv

    import cv2
    import yaml
    from ultralytics import YOLO

    from yolo_kd.dataset import make_dataset

    spec = yaml.safe_load(make_dataset(tmp_path, "g", n_train=8, n_val=4, imgsz=64, seed=0).read_text())
    images = sorted((tmp_path / "g" / "images").rglob("*.png"))
    for image in images:  # the generator draws in colour: store each image as one channel
        cv2.imwrite(str(image), cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2GRAY))
    data = tmp_path / "gray.yaml"
    data.write_text(yaml.safe_dump({**spec, "channels": 1}))
    torch.manual_seed(1)
    teacher = DetectionModel("yolov8s.yaml", ch=1, nc=len(spec["names"]), verbose=False)
    teacher.names = spec["names"]
    path = tmp_path / "gray_teacher.pt"
    torch.save({"model": teacher, "train_args": {}}, path)

    assert cv2.imread(str(images[0]), cv2.IMREAD_UNCHANGED).ndim == 2

    trainer = tiny_trainer(str(data), str(path), tmp_path, "gray", val=False)
    trainer.train()
    assert trainer.student_init == "the teacher's weights"
    with open(trainer.csv) as f:
        row = next(csv.DictReader(f))
    assert float(row["train/kd_cls"].strip()) > 0  # the teacher's grayscale pass reached the loss
    student = YOLO(str(trainer.last))
    assert student.model.model[0].conv.in_channels == 1
    student.predict(str(images[0]), imgsz=64, verbose=False)  # smoke check: plain Ultralytics predicts with it

"""Probe: how faithfully a student started from a teacher's weights reproduces the teacher, per channel choice.

For each teacher checkpoint and each ``kd_init_channels`` choice, build the student from its YAML, inherit the
teacher's weights (``inherit.inherit_weights``) and run both on validation images. Reported per choice:

- ``backbone r`` / ``neck r`` (and their ``min`` over layers): for each student layer, the mean Pearson correlation
  over channels between the student's output channel ``k`` and the teacher channel it stands for
  (``Selection.outputs``), with the student's normalisation layers using the batch's statistics (as training does
  from the first step), averaged over the backbone's and the neck's layers apart.
- ``box r`` / ``cls r``: the same correlation for the head's box-distribution and class logits (all levels).

No training: a second per teacher. It tells whether a choice keeps the teacher's function through the network,
which the 100-epoch runs in docs/BENCHMARKS.md measure only at the end.

    python scripts/probe_init_channels.py --data datasets/kdshapes_400_100_64.yaml --imgsz 64 TEACHER.pt [...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from yolo_kd.checkpoint import load_model_file
from yolo_kd.classes import class_pairs, name_list
from yolo_kd.inherit import inherit_weights, selection


def load_images(data: Path, imgsz: int, n: int) -> torch.Tensor:
    """The first ``n`` validation images of a dataset YAML, resized to ``imgsz``, as a float batch in [0, 1]."""
    cfg = yaml.safe_load(data.read_text())
    root = data.resolve().parent / cfg.get("path", "")
    folder = root / cfg["val"]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".png", ".jpeg"})[:n]
    images = [cv2.resize(cv2.imread(str(f))[:, :, ::-1], (imgsz, imgsz)) for f in files]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def layer_outputs(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Every top-level layer's output for one batch (the Detect layer's: its raw per-level maps)."""
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for m in model.model]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return outputs


def channel_r(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over channels of the Pearson correlation between ``a[:, k]`` and ``b[:, k]`` (B, C, H, W)."""
    a = a.transpose(0, 1).flatten(1).double()
    b = b.transpose(0, 1).flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    return float(r.mean())


def probe(teacher_path: Path, images: torch.Tensor, student_yaml: str) -> dict[str, dict[str, float]]:
    """Correlations between teacher and inherited student, for each channel choice."""
    teacher = load_model_file(teacher_path).float().eval()
    names = name_list(teacher.names)
    pairs = class_pairs(names, names, None)
    t_out = layer_outputs(teacher, images)
    nc = len(names)
    result = {}
    for channels in ("importance", "even"):
        torch.manual_seed(0)
        student = DetectionModel(student_yaml, nc=nc, verbose=False)
        chosen = selection(student, teacher, "first", channels)
        assert not isinstance(chosen, str), chosen
        assert inherit_weights(student, teacher, pairs, channels=channels) is None
        student.train()  # batch statistics in the normalisation layers, as in the first training step
        s_out = layer_outputs(student, images)
        rows: dict[str, float] = {}
        backbone = [i for i in range(10) if i in chosen.outputs]
        neck = [i for i in range(10, len(student.model) - 1) if i in chosen.outputs]
        for part, layers in (("backbone", backbone), ("neck", neck)):
            rs = [channel_r(s_out[i], t_out[i][:, chosen.outputs[i]]) for i in layers]
            rows[f"{part} r"] = float(np.mean(rs))
            rows[f"{part} r min"] = float(np.min(rs))
        s_head, t_head = (o[1] if isinstance(o, tuple) else o for o in (s_out[-1], t_out[-1]))
        for key, short in (("boxes", "box r"), ("scores", "cls r")):  # (B, C, anchors): correlate per channel
            rows[short] = channel_r(s_head[key].unsqueeze(-1), t_head[key].unsqueeze(-1))
        result[channels] = rows
    return result


def main() -> None:
    """Print one table row per teacher and channel choice."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teachers", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--imgsz", type=int, default=64)
    parser.add_argument("--n", type=int, default=64, help="validation images")
    parser.add_argument("--student", default="yolov8n.yaml")
    args = parser.parse_args()
    images = load_images(args.data, args.imgsz, args.n)
    cols = ["backbone r", "backbone r min", "neck r", "neck r min", "box r", "cls r"]
    print("| teacher | channels | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for path in args.teachers:
        for channels, rows in probe(path, images, args.student).items():
            print(f"| {path} | {channels} | " + " | ".join(f"{rows[c]:.3f}" for c in cols) + " |")


if __name__ == "__main__":
    main()

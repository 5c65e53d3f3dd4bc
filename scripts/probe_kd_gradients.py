"""Size of each loss term and of its gradient on the student, on real training batches.

Used to balance the KD gains against Ultralytics' box/cls/dfl terms: one backward pass per term, gradient L2 norm
over all student parameters, and each term's gradient cosine with the ground truth's (box + cls + dfl): a KD term
near 0 or below pulls the student's weights across or against where its labels pull them (CrossKD's diagnosis).

    python scripts/probe_kd_gradients.py --teacher runs/bench/teacher_yolov8s_e40_160/weights/best.pt \
        --data datasets/kdshapes.yaml --imgsz 160 [--student runs/bench/baseline_s0/weights/best.pt]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # a benchmark installs nothing behind the user's back
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.data import build_yolo_dataset  # noqa: E402
from ultralytics.data.utils import check_det_dataset  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, load_checkpoint  # noqa: E402

from yolo_kd.classes import class_pairs, name_list  # noqa: E402
from yolo_kd.config import load_kd_config  # noqa: E402
from yolo_kd.criterion import KDLoss, probe_head_channels  # noqa: E402
from yolo_kd.distiller import Distiller  # noqa: E402
from yolo_kd.inherit import inherit_weights  # noqa: E402
from yolo_kd.teacher import FrozenTeacher  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--student", default="yolov8n.yaml", help="a .yaml (fresh student) or a trained .pt")
    p.add_argument("--kd", default="default")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--init", action="store_true", help="a .yaml student starts from the teacher's weights (kd_init)")
    a = p.parse_args()

    torch.manual_seed(0)
    args = get_cfg(overrides={"imgsz": a.imgsz, "data": a.data})
    data = check_det_dataset(a.data)
    ds = build_yolo_dataset(args, data["train"], a.batch, data, mode="train", stride=32)
    loader = DataLoader(ds, batch_size=a.batch, shuffle=True, collate_fn=ds.collate_fn)
    teacher = FrozenTeacher(load_checkpoint(a.teacher)[0], torch.device("cpu"))
    if a.student.endswith(".pt"):
        # as Ultralytics fine-tunes a .pt: the checkpoint's architecture for this data's classes, its matching weights
        pretrained = load_checkpoint(a.student)[0]
        student = DetectionModel(pretrained.yaml, nc=data["nc"], verbose=False)
        student.load(pretrained, verbose=False)
    else:
        student = DetectionModel(a.student, nc=data["nc"], verbose=False)
        if a.init:
            pairs = class_pairs(name_list(data["names"]), name_list(teacher.model.names), None)
            print("kd_init:", inherit_weights(student, load_checkpoint(a.teacher)[0].float(), pairs) or "applied")
    student.args = args
    student.train()
    for q in student.parameters():
        q.requires_grad_(True)
    cfg = load_kd_config(a.kd)
    modules = Distiller(probe_head_channels(student), probe_head_channels(teacher.model), cfg)
    student.criterion = KDLoss(student.init_criterion(), teacher, modules, cfg, student.model[-1].reg_max)
    batches = iter(loader)
    for _ in range(a.batches):
        batch = next(batches)
        batch["img"] = batch["img"].float() / 255
        loss, items = student.loss(batch)
        grads = {}
        for i, k in enumerate(items):
            student.zero_grad()
            loss[i].backward(retain_graph=True)
            grads[k] = torch.cat([q.grad.flatten() for q in student.parameters() if q.grad is not None])
        truth = grads["box_loss"] + grads["cls_loss"] + grads["dfl_loss"]
        # a term switched off (gain 0) has no gradient and no direction: left out
        cosine = {k: float(torch.nn.functional.cosine_similarity(g, truth, dim=0)) for k, g in grads.items() if g.any()}
        print("value    ", {k: round(float(v), 4) for k, v in items.items()})
        print("grad norm", {k: round(float(g.norm()), 1) for k, g in grads.items()})
        print("cos(gt)  ", {k: round(v, 3) for k, v in cosine.items()})


if __name__ == "__main__":
    main()

"""Multi-process training: the DDP launch file round trip and a 2-process gloo step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from yolo_kd import KDDetectionTrainer

from .conftest import IMGSZ

pytestmark = pytest.mark.slow  # a trained teacher and multi-process runs


def test_ddp_file_round_trip_keeps_the_kd_configuration(data_yaml: str, teacher_pt: str, tmp_path: Path) -> None:
    from ultralytics.utils import DEFAULT_CFG_DICT
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file
    from ultralytics.utils.patches import torch_load

    trainer = KDDetectionTrainer(
        overrides=dict(
            model="yolov8n.yaml",
            data=data_yaml,
            teacher=teacher_pt,
            kd="logit",
            kd_cls_temp=3.5,
            project=str(tmp_path),
            name="ddp",
        )
    )
    file = generate_ddp_file(trainer)
    try:
        # exactly what Ultralytics' generated worker script does
        state = torch_load(Path(file).with_suffix(".pt"), map_location="cpu")
        cfg = DEFAULT_CFG_DICT.copy()
        cfg.update(save_dir="")
        rebuilt = state["trainer"](cfg=cfg, overrides=state["args"], _callbacks=state["callbacks"])
    finally:
        ddp_cleanup(trainer, file)
    assert rebuilt.kd_cfg == trainer.kd_cfg and rebuilt.kd_cfg.kd_cls_temp == 3.5 and rebuilt.kd_cfg.kd_feat == 0
    assert rebuilt.teacher_path == trainer.teacher_path and rebuilt.teacher_sha256 == trainer.teacher_sha256


def _grads(rank: int, world: int, teacher_pt: str, port: int, out: str) -> None:
    """One KD step. world=1: the joint batch; world=2: each rank one half, student in DDP, connectors all-reduced."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    from yolo_kd.compat import average_gradients, broadcast_from_rank0
    from yolo_kd.config import KDConfig
    from yolo_kd.criterion import KDLoss, probe_head_channels
    from yolo_kd.distiller import Distiller
    from yolo_kd.teacher import FrozenTeacher

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    student = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    # Detection gains 0: Ultralytics clamps its loss normaliser (target_scores_sum) at 1, so with an untrained student
    # its own terms do not split exactly over ranks; the KD terms, which this test is about, must.
    student.args = get_cfg(overrides={"box": 0.0, "cls": 0.0, "dfl": 0.0})
    # Uniform anchor weights and BatchNorm in eval mode make every term a plain mean over images, so the joint
    # batch's gradient is exactly the mean of the two halves' - if, and only if, every gradient is synchronised.
    # MGD without its random mask: a deterministic feature term with gradients well above float noise.
    # Cross-head KD too: its connectors' gradients come back through the teacher's head.
    cfg = KDConfig(
        kd_feat=1.0, kd_feat_loss="mgd", kd_mgd_mask=0.0, kd_cross=1.0, kd_teacher_amp=False, kd_weight_power=0.0
    )
    teacher = FrozenTeacher(load_checkpoint(teacher_pt)[0], torch.device("cpu"), amp=False, cross_head=True)
    torch.manual_seed(1 + rank)  # ranks seeded apart, as Ultralytics seeds them: the connectors start different
    modules = Distiller(probe_head_channels(student), probe_head_channels(teacher.model), cfg)
    if world > 1:
        broadcast_from_rank0(modules)  # what the trainer does after building them
    student.train()
    for m in student.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    student.criterion = KDLoss(student.init_criterion(), teacher, modules, cfg, student.model[-1].reg_max)
    g = torch.Generator().manual_seed(1)
    joint = {
        "img": torch.rand(4, 3, IMGSZ, IMGSZ, generator=g),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 3.0]),
        "cls": torch.tensor([[1.0], [3.0], [7.0], [2.0], [0.0], [9.0]]),
        "bboxes": torch.rand(6, 4, generator=g) * 0.4 + 0.2,
    }
    if world == 1:
        batch, model = joint, student
    else:  # rank r gets images 2r and 2r+1 and their labels
        keep = (joint["batch_idx"] // 2) == rank
        batch = {
            "img": joint["img"][2 * rank : 2 * rank + 2],
            "batch_idx": joint["batch_idx"][keep] - 2 * rank,
            "cls": joint["cls"][keep],
            "bboxes": joint["bboxes"][keep],
        }
        model = torch.nn.parallel.DistributedDataParallel(student, find_unused_parameters=True)
    loss, _ = model(batch)
    (loss.sum() * world).backward()  # Ultralytics scales the DDP loss by the world size
    if world > 1:
        average_gradients(modules.parameters(), world)
    if rank == 0:
        named = {f"student.{k}": p.grad for k, p in student.named_parameters() if p.grad is not None}
        named.update({f"kd.{k}": p.grad for k, p in modules.named_parameters()})
        torch.save(named, out)
    if world > 1:
        dist.destroy_process_group()


def test_two_process_gloo_step_matches_one_process_on_the_joint_batch(teacher_pt: str, tmp_path: Path) -> None:
    from ultralytics.utils.dist import find_free_network_port

    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    _grads(0, 1, teacher_pt, 0, one)
    mp.spawn(_grads, args=(2, teacher_pt, find_free_network_port(), two), nprocs=2, join=True)
    g1, g2 = torch.load(one), torch.load(two)
    assert g1.keys() == g2.keys() and any(k.startswith("kd.") for k in g1)
    assert all(g.abs().sum() > 0 for k, g in g1.items() if k.startswith("kd."))
    for k in g1:
        assert torch.allclose(g1[k], g2[k], rtol=1e-3, atol=1e-4 * float(g1[k].abs().max())), k

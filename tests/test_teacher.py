"""FrozenTeacher: frozen, always in eval mode, fused, and returning the dense head outputs."""

from __future__ import annotations

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from yolo_kd.teacher import FrozenTeacher


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo26n.yaml"])
def test_frozen_teacher_outputs_and_state(cfg: str) -> None:
    teacher = FrozenTeacher(DetectionModel(cfg, nc=3, verbose=False), torch.device("cpu"), amp=False)
    teacher.train()  # what a trainer does to every module it reaches
    assert not teacher.training and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules()), "BatchNorm was not fused"
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    out = teacher(x)
    anchors = 8 * 8 + 4 * 4 + 2 * 2
    assert out["scores"].shape == (2, 3, anchors) and out["boxes"].shape[::2] == (2, anchors)
    assert [f.shape[-1] for f in out["feats"]] == [8, 4, 2]
    assert not out["scores"].requires_grad, "teacher outputs must carry no graph"
    head = teacher.model.model[-1]
    assert head.cv2 is not None, "end-to-end teacher lost its dense one2many branch"
    teacher.feats = False  # no feature term: no neck maps returned, the same head outputs
    lean = teacher(x)
    assert lean["feats"] == [] and torch.equal(lean["scores"], out["scores"])


def test_bf16_teacher_close_to_fp32() -> None:
    from yolo_kd.teacher import reduced_precision

    if reduced_precision(torch.device("cpu")) is None:
        pytest.skip("this CPU has no native bf16; the fp32 path is covered above")
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    x = torch.rand(1, 3, 64, 64)
    fp32 = FrozenTeacher(model, torch.device("cpu"), amp=False)(x)["scores"].sigmoid()
    bf16 = FrozenTeacher(model, torch.device("cpu"), amp=True)(x)["scores"].sigmoid()
    assert (fp32 - bf16).abs().max() < 0.02


def test_amp_check_never_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import ultralytics.engine.trainer as engine

    from yolo_kd.compat import amp_check_offline

    monkeypatch.setattr("ultralytics.utils.WEIGHTS_DIR", tmp_path)  # no yolo26n.pt there
    calls = []

    def check_amp(m: torch.nn.Module) -> bool:  # stands in for Ultralytics' check, which downloads its weights
        calls.append(m)
        return False

    monkeypatch.setattr(engine, "check_amp", check_amp)
    model = torch.nn.Conv2d(1, 1, 1)
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda")), raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    with amp_check_offline():
        assert engine.check_amp(model) is True
    assert calls == [], "Ultralytics' check (which downloads) ran although its weights are missing"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce GTX 1660 SUPER")
    with amp_check_offline():  # a GPU Ultralytics refuses AMP on by name: its check decides, before any download
        assert engine.check_amp(model) is False and calls == [model]
    calls.clear()
    (tmp_path / "yolo26n.pt").write_bytes(b"")  # weights present: Ultralytics' own check decides
    with amp_check_offline():
        assert engine.check_amp(model) is False and calls == [model]
    assert engine.check_amp is check_amp, "the patch lasts for the block only"

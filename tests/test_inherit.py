"""Weight selection: a from-scratch student starting from the teacher's weights (kd_init)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel, load_checkpoint

from tests.conftest import tiny_trainer
from yolo_kd.config import KDConfigError, load_kd_config
from yolo_kd.inherit import class_output_keys, evenly_spaced, inherit_weights


def _model(cfg: str, nc: int = 3, seed: int = 0) -> DetectionModel:
    torch.manual_seed(seed)
    return DetectionModel(cfg, nc=nc, verbose=False)


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


def test_wider_teacher_is_sliced_evenly_and_classes_copied_by_class() -> None:
    student, teacher = _model("yolov8n.yaml", nc=3), _model("yolov8s.yaml", nc=4, seed=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    pairs = [(0, 3), (1, 0)]  # student class 2 has no teacher class
    assert inherit_weights(student, teacher, pairs) is None
    s, t = student.state_dict(), teacher.state_dict()
    assert torch.equal(s["model.0.conv.weight"], t["model.0.conv.weight"][::2])  # 16 of 32 filters, 3 inputs
    assert torch.equal(s["model.1.conv.weight"], t["model.1.conv.weight"][::2, ::2])
    assert torch.equal(s["model.1.bn.running_var"], t["model.1.bn.running_var"][::2])
    cls_w = "model.22.cv3.0.2.weight"
    assert cls_w in class_output_keys(student)
    assert torch.equal(s[cls_w][0], t[cls_w][3, ::2]) and torch.equal(s[cls_w][1], t[cls_w][0, ::2])
    assert torch.equal(s[cls_w][2], before[cls_w][2])  # unmatched class keeps its own init
    assert torch.equal(s["model.22.cv3.0.2.bias"][:2], t["model.22.cv3.0.2.bias"][[3, 0]])


SAME_DEPTH_PAIRS = [("yolo11n.yaml", "yolo11s.yaml"), ("yolov8l.yaml", "yolov8x.yaml")]


@pytest.mark.parametrize(("student_cfg", "teacher_cfg"), SAME_DEPTH_PAIRS)
def test_other_same_depth_pairs_are_selected(student_cfg: str, teacher_cfg: str) -> None:
    student, teacher = _model(student_cfg), _model(teacher_cfg, seed=1)
    assert inherit_weights(student, teacher, [(0, 0), (1, 1), (2, 2)]) is None
    s, t = student.state_dict(), teacher.state_dict()
    first = "model.0.conv.weight"
    assert torch.equal(s[first], t[first][evenly_spaced(t[first].shape[0], s[first].shape[0])])


def test_teacher_of_another_depth_is_refused_and_student_untouched() -> None:
    student, teacher = _model("yolov8n.yaml"), _model("yolov8m.yaml")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    reason = inherit_weights(student, teacher, [(0, 0)])
    assert reason is not None and "layers differ" in reason
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_narrower_teacher_is_refused() -> None:
    student, teacher = _model("yolov8s.yaml"), _model("yolov8n.yaml")
    reason = inherit_weights(student, teacher, [(0, 0)])
    assert reason is not None and "not at least the student's" in reason


def test_bad_kd_init_value() -> None:
    with pytest.raises(KDConfigError, match="kd_init='random'"):
        load_kd_config(kd_init="random")


def test_trainer_starts_a_yaml_student_from_the_teacher_only(data_yaml: str, teacher_pt: str, tmp_path: Path) -> None:
    teacher, _ = load_checkpoint(teacher_pt)
    want = teacher.state_dict()["model.0.conv.weight"][::2]

    trainer = tiny_trainer(data_yaml, teacher_pt, tmp_path, "init")
    assert torch.equal(trainer.get_model(cfg="yolov8n.yaml").state_dict()["model.0.conv.weight"], want)

    trainer = tiny_trainer(data_yaml, teacher_pt, tmp_path, "noinit", kd_init="none")
    assert not torch.equal(trainer.get_model(cfg="yolov8n.yaml").state_dict()["model.0.conv.weight"], want)

    # a student that comes with weights (pretrained, resumed) keeps them
    own = _model("yolov8n.yaml", nc=len(trainer.data["names"]), seed=3)
    trainer = tiny_trainer(data_yaml, teacher_pt, tmp_path, "pretrained")
    got = trainer.get_model(cfg="yolov8n.yaml", weights=own).state_dict()["model.0.conv.weight"]
    assert torch.equal(got, own.state_dict()["model.0.conv.weight"])

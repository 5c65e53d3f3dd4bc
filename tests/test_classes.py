"""Class mapping between teacher and student label sets, and teachers of another YOLO family."""

from __future__ import annotations

import copy
import csv
import shutil
from pathlib import Path

import pytest
import yaml

from yolo_kd import KDConfigError, KDDetectionTrainer
from yolo_kd.classes import class_pairs, name_list, norm_name

from .conftest import IMGSZ


def test_names_are_read_in_index_order() -> None:
    assert name_list({1: "dog", 0: "cat", "2": "bird"}) == ["cat", "dog", "bird"]  # a YAML written out of order
    assert name_list(["cat", "dog"]) == ["cat", "dog"] and name_list(None) == []


def test_pairs_by_normalised_name_and_explicit_map() -> None:
    teacher = ["person", "Traffic Light", "car", "dog"]
    assert class_pairs(["traffic_light", "dog", "zebra"], teacher) == [(0, 1), (1, 3)]
    assert class_pairs(["auto", "hund"], teacher, {"auto": "car", 1: 3}) == [(0, 2), (1, 3)]
    with pytest.raises(KDConfigError, match="no class in common"):
        class_pairs(["zebra"], teacher)
    with pytest.raises(KDConfigError, match="teacher has no class named 'bus'"):
        class_pairs(["auto"], teacher, {"auto": "bus"})
    with pytest.raises(KDConfigError, match="student class 'auto' \\(0\\) is mapped twice"):
        class_pairs(["auto", "hund"], teacher, {"auto": "car", 0: "person"})  # by name and by index
    assert class_pairs(["auto", "car"], teacher, {"auto": "car", "car": "car"}) == [(0, 2), (1, 2)]  # one teacher class


def test_single_cls_student_is_checked_as_its_one_class_item(tmp_path: Path) -> None:
    from ultralytics.nn.tasks import DetectionModel

    from yolo_kd.config import KDConfig
    from yolo_kd.settings import check_pair

    teacher = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    teacher.names = {0: "cat", 1: "dog"}
    data = tmp_path / "data.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nnames:\n  0: cat\n  1: dog\n")
    check_pair(teacher, "yolov8n.yaml", str(data), KDConfig())  # the data YAML's classes match the teacher's
    with pytest.raises(KDConfigError, match="single_cls=True names the student's one class 'item'"):
        check_pair(teacher, "yolov8n.yaml", str(data), KDConfig(), single_cls=True)
    check_pair(teacher, "yolov8n.yaml", str(data), KDConfig(kd_class_map={"item": "cat"}), single_cls=True)
    teacher.names = {0: "item"}  # a teacher trained with single_cls itself
    check_pair(teacher, "yolov8n.yaml", str(data), KDConfig(), single_cls=True)


def test_a_teacher_of_other_image_channels_is_refused_in_one_line(tmp_path: Path) -> None:
    from ultralytics.nn.tasks import DetectionModel

    from yolo_kd.config import KDConfig
    from yolo_kd.settings import check_pair

    data = tmp_path / "gray.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nchannels: 1\nnames:\n  0: cat\n")
    gray = DetectionModel("yolov8n.yaml", ch=1, nc=1, verbose=False)
    gray.names = {0: "cat"}
    check_pair(gray, "yolov8n.yaml", str(data), KDConfig())  # a grayscale teacher for grayscale data
    rgb = DetectionModel("yolov8n.yaml", nc=1, verbose=False)
    rgb.names = {0: "cat"}
    with pytest.raises(KDConfigError, match="the teacher takes 3-channel images, data=.* has 1") as e:
        check_pair(rgb, "yolov8n.yaml", str(data), KDConfig())
    assert "\n" not in str(e.value)


def test_pseudo_labels_from_an_end_to_end_teacher_saved_fused_are_refused_in_one_line(tmp_path: Path) -> None:
    """A YOLO26 teacher saved after Ultralytics' inference fusion has no dense branch to cut pseudo-labels from."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from yolo_kd.config import KDConfig
    from yolo_kd.settings import check_pair
    from yolo_kd.teacher import FrozenTeacher

    data = tmp_path / "data.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nnames:\n  0: cat\n")
    (tmp_path / "unlabeled").mkdir()
    (tmp_path / "unlabeled" / "a.png").write_bytes(b"")  # the config checks that the folder holds images
    pseudo = KDConfig(unlabeled=str(tmp_path / "unlabeled"))
    teacher = DetectionModel("yolo26n.yaml", nc=1, verbose=False)
    teacher.names = {0: "cat"}
    check_pair(teacher, "yolo26n.yaml", str(data), pseudo)  # as trained: both branches
    fused = copy.deepcopy(teacher)
    fused.model[-1].fuse()  # fused with NMS (end2end off): the one2one branch goes, the dense one stays
    check_pair(fused, "yolo26n.yaml", str(data), pseudo)
    teacher.model[-1].end2end = True  # NMS-free mode, as nms=False selects
    teacher.model[-1].fuse()  # fusion then keeps the one2one branch alone
    with pytest.raises(KDConfigError, match="saved fused, without the dense branch") as e:
        check_pair(teacher, "yolo26n.yaml", str(data), pseudo)
    assert "\n" not in str(e.value)
    check_pair(teacher, "yolo26n.yaml", str(data), KDConfig(unlabeled=pseudo.unlabeled, kd_pseudo=False))
    check_pair(teacher, "yolo26n.yaml", str(data), KDConfig())  # the KD terms alone read its one2one outputs
    assert not FrozenTeacher(teacher, torch.device("cpu"), amp=False).dense


def subset_dataset(data_yaml: str, keep: list[str], out: Path) -> str:
    """Copy the generated dataset keeping only the classes in ``keep``, re-indexed in that order."""
    cfg = yaml.safe_load(Path(data_yaml).read_text())
    names = list(cfg["names"].values())
    norm = [norm_name(n) for n in names]
    remap = {norm.index(norm_name(n)): i for i, n in enumerate(keep)}
    src = Path(data_yaml).parent / Path(cfg["train"]).parts[0]
    for split in ("train", "val"):
        shutil.copytree(src / "images" / split, out / "sub" / "images" / split)
        (out / "sub" / "labels" / split).mkdir(parents=True)
        for lab in (src / "labels" / split).glob("*.txt"):
            rows = [line.split() for line in lab.read_text().splitlines()]
            kept = [" ".join([str(remap[int(r[0])]), *r[1:]]) for r in rows if int(r[0]) in remap]
            (out / "sub" / "labels" / split / lab.name).write_text("".join(f"{k}\n" for k in kept))
    path = out / "sub.yaml"
    path.write_text(
        yaml.safe_dump({"train": "sub/images/train", "val": "sub/images/val", "names": dict(enumerate(keep))})
    )
    return str(path)


def _train(tmp_path: Path, name: str, **overrides) -> tuple[KDDetectionTrainer, list[dict]]:
    overrides.setdefault("kd", "full")  # every term, teacher-guided assignment included, across the pairs
    trainer = KDDetectionTrainer(
        overrides=dict(
            epochs=1, imgsz=IMGSZ, batch=8, workers=0, plots=False, project=str(tmp_path), name=name, **overrides
        )
    )
    trainer.train()
    with open(tmp_path / name / "results.csv") as f:
        rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return trainer, rows


@pytest.mark.slow
def test_teacher_with_more_classes_distils_into_a_subset_in_another_order(
    data_yaml: str, teacher_pt: str, tmp_path: Path
) -> None:
    sub = subset_dataset(data_yaml, ["Octagon", "disc red", "plus"], tmp_path)
    trainer, rows = _train(tmp_path, "subset", model="yolov8n.yaml", data=sub, teacher=teacher_pt)
    # student 0 (Octagon) <- teacher 7, 1 (disc red) <- teacher 0, 2 (plus) <- teacher 8
    assert trainer.class_pairs == [(0, 7), (1, 0), (2, 8)]
    assert rows[0]["train/kd_cls"] > 0 and rows[0]["train/kd_feat"] > 0


@pytest.mark.slow
def test_no_common_class_is_one_clear_error(data_yaml: str, teacher_pt: str, tmp_path: Path) -> None:
    other = Path(data_yaml).with_name("unrelated.yaml")
    cfg = yaml.safe_load(Path(data_yaml).read_text())
    cfg["names"] = {i: f"thing{i}" for i in cfg["names"]}
    other.write_text(yaml.safe_dump(cfg))
    with pytest.raises(KDConfigError, match="no class in common"):
        KDDetectionTrainer(
            overrides=dict(model="yolov8n.yaml", data=str(other), teacher=teacher_pt, project=str(tmp_path / "p"))
        )
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(("student", "box_on"), [("yolo11n.yaml", True), ("yolo26n.yaml", False)])
@pytest.mark.slow
def test_yolov8_teacher_distils_into_other_families(
    data_yaml: str, teacher_pt: str, tmp_path: Path, student: str, box_on: bool
) -> None:
    _, rows = _train(tmp_path, Path(student).stem, model=student, data=data_yaml, teacher=teacher_pt)
    assert rows[0]["train/kd_cls"] > 0 and rows[0]["train/kd_feat"] > 0
    # YOLO26 regresses boxes directly (reg_max=1): no DFL distribution to distil, so that term is off
    assert (rows[0]["train/kd_box"] > 0) == box_on


@pytest.mark.slow
def test_end_to_end_yolo26_teacher_distils_into_yolov8(data_yaml: str, tmp_path: Path) -> None:
    from .conftest import _train as train_teacher

    teacher = train_teacher("yolo26s.yaml", data_yaml, tmp_path, "t26")
    _, rows = _train(tmp_path, "v8_from_26", model="yolov8n.yaml", data=data_yaml, teacher=teacher)
    assert rows[0]["train/kd_cls"] > 0 and rows[0]["train/kd_feat"] > 0
    assert rows[0]["train/kd_box"] == 0  # the YOLO26 teacher has no DFL distribution (reg_max=1)

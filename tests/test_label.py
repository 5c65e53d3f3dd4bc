"""yolo-kd label: the teacher annotates a folder as a dataset Ultralytics trains on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from yolo_kd.cli import main

from .conftest import IMGSZ


@pytest.fixture()
def raw_images(data_yaml: str, tmp_path: Path) -> Path:
    """Unlabelled images: the generated val images, copied without their labels, plus one unreadable file."""
    src = Path(data_yaml).parent / "tiny" / "images" / "val"
    dst = tmp_path / "raw"
    shutil.copytree(src, dst)
    (dst / "broken.png").write_bytes(b"not an image")
    return dst


def test_label_writes_a_dataset_ultralytics_trains_on(teacher_pt: str, raw_images: Path, tmp_path: Path) -> None:
    from ultralytics import YOLO

    from yolo_kd.label import label_folder

    summary = label_folder(teacher_pt, raw_images, conf=0.001)  # an untrained teacher is unsure of everything
    images = sorted(raw_images.glob("*.png"))
    assert summary["images"] == len(images) and summary["unreadable"] == [str(raw_images / "broken.png")]
    labels = [p.with_suffix(".txt") for p in images if p.name != "broken.png"]
    assert all(p.exists() for p in labels) and sum(summary["boxes_per_class"].values()) > 0
    for lab in labels:
        for line in lab.read_text().splitlines():
            c, *xywh = line.split()
            assert 0 <= int(c) < 10 and all(0 <= float(v) <= 1 for v in xywh)
    data = yaml.safe_load(Path(summary["yaml"]).read_text())
    assert len(data["names"]) == 10
    YOLO("yolov8n.yaml").train(
        data=summary["yaml"],
        epochs=1,
        imgsz=IMGSZ,
        batch=4,
        workers=0,
        plots=False,
        project=str(tmp_path),
        name="on_labels",
        val=False,
    )
    assert (tmp_path / "on_labels" / "weights" / "last.pt").exists()

    again = label_folder(teacher_pt, raw_images, conf=0.001)  # resumable: nothing left to do
    assert again["labelled_now"] == 0 and again["skipped_already_labelled"] == len(labels)


def test_label_maps_to_student_names(teacher_pt: str, raw_images: Path, tmp_path: Path) -> None:
    from yolo_kd.label import label_folder

    student = tmp_path / "student.yaml"
    student.write_text(yaml.safe_dump({"train": ".", "val": ".", "names": {0: "Plus", 1: "disc red"}}))
    summary = label_folder(teacher_pt, raw_images, conf=0.001, names=student, out=tmp_path / "mapped.yaml")
    assert set(summary["boxes_per_class"]) <= {"Plus", "disc red"}
    classes = {line.split()[0] for p in raw_images.glob("*.txt") for line in p.read_text().splitlines()}
    assert classes <= {"0", "1"}


def _refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(["label", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_label_refusals_write_nothing(teacher_pt: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in _refused([f"model={teacher_pt}", f"source={empty}"], capsys)
    (empty / "notes.txt").write_text("x")
    assert "no images" in _refused([f"model={teacher_pt}", f"source={empty}"], capsys)
    assert "not a folder" in _refused([f"model={teacher_pt}", f"source={tmp_path / 'nope'}"], capsys)
    from ultralytics.nn.tasks import ClassificationModel

    cls_pt = tmp_path / "cls.pt"
    import torch

    torch.save({"model": ClassificationModel("yolov8n-cls.yaml", nc=3, verbose=False), "train_args": {}}, cls_pt)
    (empty / "a.png").write_bytes((Path(__file__).parent / "__init__.py").read_bytes())
    assert "not a detection model" in _refused([f"model={cls_pt}", f"source={empty}"], capsys)
    assert sorted(p.name for p in empty.iterdir()) == ["a.png", "notes.txt"]

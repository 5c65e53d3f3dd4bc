"""yolo-kd label: the teacher annotates a folder as a dataset Ultralytics trains on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from yolo_kd.cli import main

from .conftest import IMGSZ, tiny_trainer


@pytest.fixture()
def raw_images(data_yaml: str, tmp_path: Path) -> Path:
    """Unlabelled images: the generated val images, copied without their labels, plus one unreadable file."""
    src = Path(data_yaml).parent / "tiny" / "images" / "val"
    dst = tmp_path / "raw"
    shutil.copytree(src, dst)
    (dst / "broken.png").write_bytes(b"not an image")
    return dst


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (links read through)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _classes(out: Path) -> set[str]:
    return {line.split()[0] for p in (out / "labels").rglob("*.txt") for line in p.read_text().splitlines()}


@pytest.mark.slow
def test_label_writes_a_dataset_ultralytics_trains_on(teacher_pt: str, raw_images: Path, tmp_path: Path) -> None:
    from ultralytics import YOLO

    from yolo_kd.label import label_folder

    source_before = _snapshot(raw_images)
    summary = label_folder(teacher_pt, raw_images, conf=0.001)  # an untrained teacher is unsure of everything
    out = tmp_path / "raw_labelled"
    assert summary["yaml"] == str(out / "data.yaml") and _snapshot(raw_images) == source_before  # source only read
    images = sorted(raw_images.glob("*.png"))
    assert summary["images"] == len(images) and summary["unreadable"] == [str(raw_images / "broken.png")]
    labels = sorted((out / "labels").rglob("*.txt"))
    assert len(labels) == len(images) - 1 and sum(summary["boxes_per_class"].values()) > 0
    for lab in labels:
        for line in lab.read_text().splitlines():
            c, *xywh = line.split()
            assert 0 <= int(c) < 10 and all(0 <= float(v) <= 1 for v in xywh)
    data = yaml.safe_load(Path(summary["yaml"]).read_text())
    assert len(data["names"]) == 10
    # a held-out validation split: no training image is validated on
    train = {p.name for p in (out / "images" / "train").iterdir()}
    val = {p.name for p in (out / "images" / "val").iterdir()}
    assert train and val and not train & val and summary["val_images"] == len(val)
    assert data["train"] == "images/train" and data["val"] == str(out / "images" / "val")
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


@pytest.mark.slow
def test_label_maps_to_student_names_and_uses_the_users_val(
    data_yaml: str, teacher_pt: str, raw_images: Path, tmp_path: Path
) -> None:
    from yolo_kd.label import label_folder

    student = tmp_path / "student.yaml"
    student.write_text(yaml.safe_dump({"train": ".", "val": ".", "names": {0: "Plus", 1: "disc red"}}))
    own_val = Path(data_yaml).parent / "tiny" / "images" / "train"
    summary = label_folder(teacher_pt, raw_images, conf=0.001, names=student, out=tmp_path / "mapped", val=own_val)
    assert set(summary["boxes_per_class"]) <= {"Plus", "disc red"}
    assert _classes(tmp_path / "mapped") <= {"0", "1"}
    data = yaml.safe_load(Path(summary["yaml"]).read_text())
    assert data["val"] == str(own_val) and summary["val_images"] == 0  # the user's own labelled images, untouched
    assert summary["train_images"] == len(list(raw_images.glob("*.png")))


@pytest.mark.slow
def test_label_never_writes_into_an_existing_dataset(
    data_yaml: str, teacher_pt: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from yolo_kd.label import label_folder

    shutil.copytree(Path(data_yaml).parent / "tiny", tmp_path / "tiny")
    shutil.copy(data_yaml, tmp_path / "tiny.yaml")
    for lab in sorted((tmp_path / "tiny" / "labels" / "val").glob("*.txt"))[:3]:
        lab.unlink()  # images without labels: the old command filled them with teacher boxes
    before = _snapshot(tmp_path)
    summary = label_folder(teacher_pt, tmp_path / "tiny", conf=0.001)
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("tiny_labelled")} == before
    assert summary["yaml"] == str(tmp_path / "tiny_labelled" / "data.yaml")
    assert len(list((tmp_path / "tiny_labelled" / "labels").rglob("*.txt"))) == summary["images"] == 24
    # labels land under labels/, not inside images/, though the source is itself an images/{train,val} tree
    assert not list((tmp_path / "tiny_labelled" / "images").rglob("*.txt"))
    for out in (tmp_path / "tiny", tmp_path):
        err = _refused([f"model={teacher_pt}", f"source={tmp_path / 'tiny' / 'images'}", f"out={out}"], capsys)
        assert f"out={out}: exists and is not a dataset yolo-kd labelled" in err
    assert _snapshot(tmp_path) == after


@pytest.mark.slow
def test_label_resumes_only_with_the_same_settings(
    teacher_pt: str, raw_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from yolo_kd.label import label_folder

    (raw_images / "broken.png").unlink()
    out = tmp_path / "ds"
    first = label_folder(teacher_pt, raw_images, conf=0.001, out=out)
    before = _snapshot(out)
    err = _refused([f"model={teacher_pt}", f"source={raw_images}", f"out={out}", "conf=0.5"], capsys)
    assert "was labelled with other settings (conf differ)" in err and _snapshot(out) == before
    # another split would leave the old one's files mixed in: refused even with overwrite=True
    err = _refused(
        [f"model={teacher_pt}", f"source={raw_images}", f"out={out}", "seed=3", "overwrite=True", "conf=0.001"],
        capsys,
    )
    assert "would not replace" in err and _snapshot(out) == before
    again = label_folder(teacher_pt, raw_images, conf=0.5, out=out, overwrite=True)
    assert again["labelled_now"] == first["images"] and again["skipped_already_labelled"] == 0
    # a source that gained an image would draw another split: not a resume
    shutil.copy(next(raw_images.glob("*.png")), raw_images / "new.png")
    before = _snapshot(out)
    err = _refused([f"model={teacher_pt}", f"source={raw_images}", f"out={out}", "conf=0.5"], capsys)
    assert "(images differ)" in err and _snapshot(out) == before


def _refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(["label", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


@pytest.mark.slow
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
    assert not (tmp_path / "empty_labelled").exists()


@pytest.mark.slow
def test_label_bad_values_are_one_line_and_write_nothing(
    teacher_pt: str, raw_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = [f"model={teacher_pt}", f"source={raw_images}"]
    no_names = tmp_path / "no_names.yaml"
    no_names.write_text("train: images\n")
    png = next(raw_images.glob("*.png"))
    shutil.copy(png, png.with_suffix(".jpg"))  # a.png and a.jpg: one a.txt for two images
    before = _snapshot(tmp_path)
    for batch in (0, -1):
        assert f"batch={batch}: give a whole number" in _refused([*base, f"batch={batch}"], capsys)
    missing = tmp_path / "nope.yaml"
    assert f"names={missing}: no such file" in _refused([*base, f"names={missing}"], capsys)
    assert f"names={no_names}: has no 'names' list" in _refused([*base, f"names={no_names}"], capsys)
    assert "overlaps source" in _refused([*base, f"val={raw_images}"], capsys)
    assert "val_fraction=1.0" in _refused([*base, "val_fraction=1.0"], capsys)
    err = _refused(base, capsys)
    assert f"{png.with_suffix('.jpg').name} and {png.name} would share one label file" in err
    assert _snapshot(tmp_path) == before and not (tmp_path / "raw_labelled").exists()


@pytest.mark.slow
def test_training_with_unlabeled_images_uses_teacher_pseudo_labels(
    data_yaml: str, teacher_pt: str, raw_images: Path, tmp_path: Path
) -> None:
    import csv

    from yolo_kd import KDDetectionTrainer

    (raw_images / "broken.png").unlink()
    seen: dict = {}

    def on_train_epoch_end(trainer: KDDetectionTrainer) -> None:
        seen["pseudo"] = trainer.model.criterion.pseudo_boxes
        seen["every"] = trainer.model.criterion.pseudo_every_sample
        seen["files"] = trainer.train_loader.dataset.im_files

    trainer = tiny_trainer(
        data_yaml,
        teacher_pt,
        tmp_path,
        "semi",
        kd="full",
        unlabeled=str(raw_images),
        unlabeled_ratio=0.5,
        kd_pseudo_conf=0.001,
        close_mosaic=0,  # keep mosaic on in this one epoch
    )
    trainer.add_callback("on_train_epoch_end", on_train_epoch_end)
    caches = {p: p.read_bytes() for p in Path(data_yaml).parent.rglob("*.cache")}
    assert caches, "the teacher's training should have cached the dataset's labels"
    trainer.train()
    after = {p: p.read_bytes() for p in Path(data_yaml).parent.rglob("*.cache")}
    assert after == caches, "the run rewrote the labeled dataset's label cache"
    assert (tmp_path / "semi" / "train_with_unlabeled.cache").is_file(), "the mixed list's cache is the run's own"
    unlabelled = {str(p.resolve()) for p in raw_images.glob("*.png")}
    n_unl = sum(f in unlabelled for f in seen["files"])
    assert n_unl == 16 and len(seen["files"]) == 32  # 16 labelled + as many unlabelled slots (ratio 0.5)
    assert seen["pseudo"] > 0, "no teacher box became a pseudo-label"
    assert trainer.args.mosaic == 1.0 and seen["every"], "mosaic stays on; its samples are all pseudo-labelled"
    with open(tmp_path / "semi" / "results.csv") as f:
        row = {k.strip(): float(v) for k, v in next(csv.DictReader(f)).items()}
    assert all(row[f"train/{k}"] > 0 for k in ("kd_cls", "kd_box", "kd_feat", "box_loss", "cls_loss"))


@pytest.mark.slow
def test_bad_unlabeled_folders_are_refused(data_yaml: str, teacher_pt: str, tmp_path: Path) -> None:
    from yolo_kd import KDConfigError, KDDetectionTrainer

    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, message in ((empty, "no images"), (tmp_path / "nope", "not a folder")):
        with pytest.raises(KDConfigError, match=message):
            KDDetectionTrainer(
                overrides=dict(
                    model="yolov8n.yaml",
                    data=data_yaml,
                    teacher=teacher_pt,
                    unlabeled=str(folder),
                    project=str(tmp_path / "p"),
                )
            )
    assert not (tmp_path / "p").exists()


def test_pseudo_labels_fill_unlabelled_images_or_every_mixed_sample() -> None:
    from types import SimpleNamespace

    import torch

    from yolo_kd.config import KDConfig
    from yolo_kd.criterion import KDLoss

    teacher = SimpleNamespace(nc=3, device=torch.device("cpu"), reg_max=16)
    cfg = KDConfig(kd_pseudo_conf=0.5, kd_assign=0.0)  # no detection criterion here: nothing to assign
    # student classes: 0 <- teacher 2, 1 <- teacher 0; teacher class 1 has no student class
    loss = KDLoss(None, teacher, None, cfg, 16, class_pairs=[(0, 2), (1, 0)], unlabeled_files={"u.png"})
    batch = {
        "img": torch.zeros(2, 3, 100, 100),
        "im_file": ["u.png", "l.png"],
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[1.0], [0.0]]),
        "bboxes": torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]]),  # normalised xywh
    }
    # decoded teacher predictions (B, 4 + nc, A): pixel xywh, then class scores; 3 anchors per image
    pred = torch.zeros(2, 7, 3)
    pred[0, :4, 0] = torch.tensor([20.0, 20.0, 20.0, 20.0])  # covers image 0's ground truth: skipped
    pred[0, 4, 0] = 0.9
    pred[0, :4, 1] = torch.tensor([70.0, 70.0, 20.0, 20.0])  # new object, teacher class 2 -> student class 0
    pred[0, 6, 1] = 0.8
    pred[0, :4, 2] = torch.tensor([70.0, 20.0, 10.0, 10.0])  # teacher class 1: the student lacks it
    pred[0, 5, 2] = 0.95
    pred[1, :4, 0] = torch.tensor([80.0, 80.0, 10.0, 10.0])  # labelled image: never pseudo-labelled
    pred[1, 4, 0] = 0.99
    out = loss.pseudo_label(batch, pred)
    assert out["batch_idx"].tolist() == [0.0, 0.0, 1.0]  # sorted by image
    assert out["cls"].view(-1).tolist() == [1.0, 0.0, 0.0]
    assert torch.allclose(out["bboxes"][1], torch.tensor([0.7, 0.7, 0.2, 0.2]))
    assert loss.pseudo_boxes == 1
    # with mixing augmentations on, a labelled lead image may carry unlabelled tiles: every sample is filled
    loss.pseudo_every_sample = True
    out = loss.pseudo_label(batch, pred)
    assert out["batch_idx"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert torch.allclose(out["bboxes"][3], torch.tensor([0.8, 0.8, 0.1, 0.1]))


def test_a_resumed_run_keeps_its_data_yaml_unless_the_dataset_moved(tmp_path: Path) -> None:
    from yolo_kd.label import LabelPlan, write_data_yaml

    out = tmp_path / "ds"
    out.mkdir()
    plan = LabelPlan(out, {}, {}, {}, ["cat", "dog"], {0: 0, 1: 1}, str(out / "images" / "val"), resume=True)
    edited = yaml.safe_dump({"path": str(out), "train": "images/train", "val": "images/val", "names": {0: "kitty"}})
    (out / "data.yaml").write_text(edited)
    assert write_data_yaml(plan).read_text() == edited  # the user's edit survives a resume
    moved = yaml.safe_dump({"path": str(tmp_path / "old_place"), "names": {0: "kitty"}})
    (out / "data.yaml").write_text(moved)
    written = yaml.safe_load(write_data_yaml(plan).read_text())
    assert written["path"] == str(out) and written["names"] == {0: "cat", 1: "dog"}
    (out / "data.yaml").write_text("path: [unclosed")
    assert yaml.safe_load(write_data_yaml(plan).read_text())["path"] == str(out)
    (tmp_path / "link").symlink_to(out)  # the same folder by another name, and no path: (read beside the YAML)
    for kept in ({"path": str(tmp_path / "link"), "names": {0: "kitty"}}, {"train": "images/train", "names": {}}):
        (out / "data.yaml").write_text(yaml.safe_dump(kept))
        assert yaml.safe_load(write_data_yaml(plan).read_text()) == kept

"""The mixed labeled/unlabeled image list and the epochs with sample mixing, without a trainer."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from yolo_kd.config import KDConfig, KDConfigError
from yolo_kd.mixing import (
    labeled_images,
    mixed_image_list,
    sample_mixing,
    unlabeled_training_list,
    write_image_list,
    write_mixed_list,
)


def _images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), np.zeros((4, 4, 3), dtype=np.uint8))
    return sorted(str(p.resolve()) for p in folder.glob("*.png"))


def test_mixed_list_holds_every_labeled_image_and_the_unlabeled_share(tmp_path: Path) -> None:
    labeled = _images(tmp_path / "lab", 6)
    unlabeled = _images(tmp_path / "unl", 4)
    images, files = mixed_image_list(labeled, tmp_path / "unl", 0.75, seed=0)
    assert files == set(unlabeled)
    assert images[:6] == labeled and len(images) == 6 + 18  # 0.75 / 0.25 = 3 unlabeled slots per labeled image
    assert set(images[6:]) == set(unlabeled) and all(images[6:].count(f) in (4, 5) for f in unlabeled)  # cycled
    assert mixed_image_list(labeled, tmp_path / "unl", 0.75, seed=0)[0] == images  # the same list on every rank
    assert mixed_image_list(labeled, tmp_path / "unl", 0.75, seed=1)[0] != images


def test_labeled_images_from_folders_and_list_files(tmp_path: Path) -> None:
    labeled = _images(tmp_path / "lab", 2)
    (tmp_path / "train.txt").write_text("./lab/0.png\n/abs/x.png\n")
    assert labeled_images(tmp_path / "lab") == labeled
    assert labeled_images([tmp_path / "train.txt"]) == [str(tmp_path / "lab" / "0.png"), "/abs/x.png"]
    out = tmp_path / "list.txt"
    write_image_list(["a.png", "b.png"], out)
    assert out.read_text() == "a.png\nb.png\n"
    assert [p.name for p in tmp_path.iterdir() if "list" in p.name] == ["list.txt"], "a temporary file was left"


def test_written_mixed_list_counts_its_labeled_images_and_unlabeled_slots(tmp_path: Path) -> None:
    labeled = _images(tmp_path / "lab", 3)
    unlabeled = _images(tmp_path / "unl", 2)
    out = tmp_path / "mixed.txt"
    n_labeled, n_slots, files = write_mixed_list(tmp_path / "lab", tmp_path / "unl", 0.5, 0, out)
    assert (n_labeled, n_slots, files) == (3, 3, set(unlabeled))  # 0.5 / 0.5 = 1 unlabeled slot per labeled image
    lines = out.read_text().splitlines()
    assert lines[:3] == labeled and set(lines[3:]) <= set(unlabeled) and len(lines) == 6


def test_sample_mixing_stops_when_ultralytics_closes_mosaic() -> None:
    args = SimpleNamespace(mosaic=1.0, mixup=0.0, cutmix=0.5, close_mosaic=2)
    assert [sample_mixing(args, e, 5) for e in range(5)] == [["cutmix", "mosaic"]] * 3 + [[], []]
    assert sample_mixing(SimpleNamespace(mosaic=1.0, close_mosaic=10), 0, 3) == []  # closed from the first epoch
    assert sample_mixing(SimpleNamespace(mosaic=1.0, close_mosaic=0), 9, 10) == ["mosaic"]  # never closed
    assert sample_mixing(SimpleNamespace(mosaic=0.0, close_mosaic=0), 0, 10) == []


def test_unlabeled_training_list_is_written_in_the_run_folder(tmp_path: Path) -> None:
    labeled = _images(tmp_path / "lab", 4)
    unlabeled = _images(tmp_path / "unl", 2)
    cfg = KDConfig(unlabeled=str(tmp_path / "unl"), unlabeled_ratio=0.5)
    args = SimpleNamespace(seed=0, mosaic=1.0, mixup=0.0, cutmix=0.0, close_mosaic=0)
    path, files = unlabeled_training_list(str(tmp_path / "lab"), cfg, args, 3, tmp_path)
    assert path == tmp_path / "train_with_unlabeled.txt" and files == set(unlabeled)
    assert path.read_text().splitlines() == labeled + mixed_image_list(labeled, tmp_path / "unl", 0.5, 0)[0][4:]


def test_labeled_images_keep_link_paths_and_only_image_lines(tmp_path: Path) -> None:
    real = _images(tmp_path / "elsewhere", 1)[0]
    (tmp_path / "ds" / "images" / "train").mkdir(parents=True)
    link = tmp_path / "ds" / "images" / "train" / "a.png"
    link.symlink_to(real)  # Ultralytics finds its label beside the link (ds/labels/train/a.txt), not beside the target
    assert labeled_images(link.parent) == [str(link)]
    (link.parent / "._a.png").write_bytes(b"macOS metadata")  # hidden: Ultralytics' glob skips it, and so do we
    (link.parent / ".thumbs").mkdir()
    (link.parent / ".thumbs" / "b.png").write_bytes(b"x")
    assert labeled_images(link.parent) == [str(link)]
    (tmp_path / "train.txt").write_text("# my split\n\n./ds/images/train/a.png\nnotes.md\n")
    assert labeled_images(tmp_path / "train.txt") == [str(tmp_path / "ds" / "images" / "train" / "a.png")]


def test_unlabeled_folders_holding_validation_training_or_labelled_images_are_refused(tmp_path: Path) -> None:
    _images(tmp_path / "lab", 3)
    _images(tmp_path / "val", 2)
    out = tmp_path / "mixed.txt"
    with pytest.raises(KDConfigError, match="2 of its images are also validation images"):
        write_mixed_list(tmp_path / "lab", tmp_path / "val", 0.5, 0, out, val=tmp_path / "val")
    with pytest.raises(KDConfigError, match="3 of its images are also labeled training images"):
        write_mixed_list(tmp_path / "lab", tmp_path / "lab", 0.5, 0, out, val=tmp_path / "val")
    _images(tmp_path / "more" / "images" / "x", 2)
    (tmp_path / "more" / "labels" / "x").mkdir(parents=True)
    (tmp_path / "more" / "labels" / "x" / "0.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(KDConfigError, match="1 of its images have label files"):
        write_mixed_list(tmp_path / "lab", tmp_path / "more", 0.5, 0, out, val=tmp_path / "val")
    assert not out.exists()  # refused before the list is written
    _images(tmp_path / "raw", 2)
    assert write_mixed_list(tmp_path / "lab", tmp_path / "raw", 0.5, 0, out, val=tmp_path / "val")[:2] == (3, 3)

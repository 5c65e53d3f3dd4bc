"""The synthetic dataset: deterministic bytes and valid YOLO labels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import yaml

from yolo_kd.dataset import CLASSES, make_dataset


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", "d", n_train=6, n_val=2, imgsz=96, seed=3)
    b = make_dataset(tmp_path / "b", "d", n_train=6, n_val=2, imgsz=96, seed=3)
    c = make_dataset(tmp_path / "c", "d", n_train=6, n_val=2, imgsz=96, seed=4)
    assert _digest(a.parent) == _digest(b.parent)
    assert _digest(a.parent) != _digest(c.parent)


def test_labels_are_valid(tmp_path: Path) -> None:
    data = make_dataset(tmp_path, "d", n_train=20, n_val=5, imgsz=96, seed=0)
    cfg = yaml.safe_load(data.read_text())
    assert list(cfg["names"].values()) == list(CLASSES) and len(CLASSES) >= 10
    seen = set()
    for split in ("train", "val"):
        images = sorted((tmp_path / "d" / "images" / split).glob("*.png"))
        labels = sorted((tmp_path / "d" / "labels" / split).glob("*.txt"))
        assert [p.stem for p in images] == [p.stem for p in labels]  # one label file per image
        for img, lab in zip(images, labels):
            assert cv2.imread(str(img)).shape == (96, 96, 3)
            for line in lab.read_text().splitlines():
                c, x, y, w, h = line.split()
                assert 0 <= int(c) < len(CLASSES)
                x, y, w, h = map(float, (x, y, w, h))
                assert 0 < w <= 1 and 0 < h <= 1
                assert x - w / 2 >= -1e-6 and x + w / 2 <= 1 + 1e-6 and y - h / 2 >= -1e-6 and y + h / 2 <= 1 + 1e-6
                seen.add(int(c))
    assert len(seen) >= 8  # the classes really occur

"""A deterministic synthetic detection dataset on which distillation matters.

Ten classes in confusable pairs (a small model mixes them up, a large one less so): colour (red vs orange disc),
fill (solid vs hollow square), orientation (triangle up vs down), shape detail (hexagon vs octagon, plus vs x).
Objects range from tiny to large, overlap (labels of mostly hidden objects are dropped), and sit on noisy,
textured backgrounds with distractor clutter. Every image is drawn from its own seeded generator, so the same
arguments give the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import yaml

CLASSES = (
    "disc_red",
    "disc_orange",
    "square_solid",
    "square_hollow",
    "triangle_up",
    "triangle_down",
    "hexagon",
    "octagon",
    "plus",
    "cross",
)
_RED, _ORANGE = (40, 40, 220), (30, 140, 245)  # BGR


def _polygon(cx: float, cy: float, r: float, sides: int, rot: float) -> np.ndarray:
    a = rot + np.arange(sides) * 2 * math.pi / sides
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1).round().astype(np.int32)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A colour far from red/orange, so colour alone identifies only the disc pair."""
    while True:
        c = rng.integers(30, 256, 3)
        if not (c[2] > 150 and c[0] < 110):
            return int(c[0]), int(c[1]), int(c[2])


def _draw(img: np.ndarray, cls: int, cx: float, cy: float, r: float, rng: np.random.Generator) -> None:
    """Draw one object of class ``cls`` centred at (cx, cy) with radius r."""
    colour = _colour(rng)
    thick = max(1, round(r * 0.25))
    tilt = rng.uniform(-0.25, 0.25)
    name = CLASSES[cls]
    if name.startswith("disc"):
        cv2.circle(img, (round(cx), round(cy)), round(r), _RED if name == "disc_red" else _ORANGE, -1, cv2.LINE_AA)
    elif name == "square_solid":
        cv2.fillPoly(img, [_polygon(cx, cy, r * 1.3, 4, math.pi / 4 + tilt)], colour, cv2.LINE_AA)
    elif name == "square_hollow":
        cv2.polylines(img, [_polygon(cx, cy, r * 1.2, 4, math.pi / 4 + tilt)], True, colour, thick, cv2.LINE_AA)
    elif name.startswith("triangle"):
        rot = -math.pi / 2 if name == "triangle_up" else math.pi / 2
        cv2.fillPoly(img, [_polygon(cx, cy, r, 3, rot + tilt)], colour, cv2.LINE_AA)
    elif name == "hexagon":
        cv2.fillPoly(img, [_polygon(cx, cy, r, 6, tilt)], colour, cv2.LINE_AA)
    elif name == "octagon":
        cv2.fillPoly(img, [_polygon(cx, cy, r, 8, tilt)], colour, cv2.LINE_AA)
    else:  # plus / cross: two bars, upright or turned 45 degrees
        rot = (0.0 if name == "plus" else math.pi / 4) + tilt
        for k in range(2):
            a = rot + k * math.pi / 2
            dx, dy = r * math.cos(a), r * math.sin(a)
            p1, p2 = (round(cx - dx), round(cy - dy)), (round(cx + dx), round(cy + dy))
            cv2.line(img, p1, p2, colour, max(2, round(r * 0.45)), cv2.LINE_AA)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour gradient, low-frequency blobs and pixel noise, plus line and dot clutter."""
    base = rng.integers(60, 200, 3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    grad = rng.uniform(-60, 60, 3)[None, None] * (xx[..., None] * rng.uniform(-1, 1) + yy[..., None])
    low = cv2.resize(rng.normal(0, 35, (6, 6, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    img = base + grad + low + rng.normal(0, 12, (size, size, 3)).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(3, 9)):  # clutter: lines and small blobs that are no class
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.6:
            p1, p2 = tuple(int(v) for v in rng.integers(0, size, 2)), tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.line(img, p1, p2, c, int(rng.integers(1, 3)), cv2.LINE_AA)
        else:
            ctr = tuple(int(v) for v in rng.integers(0, size, 2))
            axes = tuple(int(v) for v in rng.integers(2, max(3, size // 14), 2))
            cv2.ellipse(img, ctr, axes, float(rng.uniform(0, 180)), 0, 360, c, -1, cv2.LINE_AA)
    return img


def make_image(seed: int, index: int, size: int) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """Draw image ``index`` of the dataset with ``seed``; return it (BGR) and its YOLO labels (cls, xc, yc, w, h)."""
    rng = np.random.default_rng([seed, index])
    img = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)  # which object each pixel shows, to measure occlusion
    objects = []
    for k in range(int(rng.integers(2, 9))):
        cls = int(rng.integers(len(CLASSES)))
        r = float(size * math.exp(rng.uniform(math.log(0.025), math.log(0.22))))  # tiny to large, log-uniform
        cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
        mask = np.zeros((size, size), np.uint8)
        _draw(mask, cls, cx, cy, r, np.random.default_rng([seed, index, k]))  # same geometry, for the footprint
        _draw(img, cls, cx, cy, r, np.random.default_rng([seed, index, k]))
        fp = mask.any(2) if mask.ndim == 3 else mask > 0
        owner[fp] = k
        objects.append((cls, fp))
    labels = []
    for k, (cls, fp) in enumerate(objects):
        area = int(fp.sum())
        visible = owner == k
        if area < 6 or visible.sum() < 0.4 * area:  # mostly hidden: no label, as an annotator would skip it
            continue
        ys, xs = np.nonzero(visible)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        labels.append((cls, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size))
    return img, labels


def image_files(folder: str | Path) -> list[Path]:
    """Every image Ultralytics can read under ``folder``, recursively, sorted."""
    from ultralytics.data.utils import IMG_FORMATS

    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix[1:].lower() in IMG_FORMATS)


def make_dataset(
    root: str | Path = "datasets",
    name: str = "kdshapes",
    n_train: int = 400,
    n_val: int = 100,
    imgsz: int = 160,
    seed: int = 0,
) -> Path:
    """Write ``root/name/{images,labels}/{train,val}`` and ``root/name.yaml``; return the YAML path.

    Existing files are rewritten with identical bytes, so calling it again is safe.
    """
    root = Path(root)
    base = root / name
    for split, count, offset in (("train", n_train, 0), ("val", n_val, 1_000_000)):
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, labels = make_image(seed, offset + i, imgsz)
            stem = f"{split}_{i:05d}"
            cv2.imwrite(str(base / "images" / split / f"{stem}.png"), img)
            text = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)
            (base / "labels" / split / f"{stem}.txt").write_text(text)
    # no 'path' key: Ultralytics then resolves train/val against the YAML's own folder, wherever the repo lives
    data = {"train": f"{name}/images/train", "val": f"{name}/images/val", "names": dict(enumerate(CLASSES))}
    yaml_path = root / f"{name}.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return yaml_path

"""A deterministic synthetic detection dataset on which distillation matters.

Ten classes in confusable pairs (a small model mixes them up, a large one less so): colour (red vs orange disc),
fill (solid vs hollow square), orientation (triangle up vs down), shape detail (hexagon vs octagon, plus vs x).
Objects range from tiny to large, overlap (labels of mostly hidden objects are dropped), and sit on noisy,
textured backgrounds with distractor clutter. Every image is drawn from its own seeded generator, so the same
arguments give the same bytes.

A second domain, ``source``, plays the part COCO plays for users: a student and a teacher are pretrained on it and
then fine-tuned on ``kdshapes``, as users fine-tune ``yolov8n.pt``. It has 12 classes, 5 shared with ``kdshapes`` and
7 of its own (so the class-score layer does not transfer, as with COCO's 80 classes), larger and fewer objects, and
striped backgrounds of another palette.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
SOURCE_CLASSES = (
    "disc_red",
    "square_solid",
    "triangle_up",
    "hexagon",
    "plus",
    "star",
    "ring",
    "diamond",
    "pentagon",
    "bar",
    "ellipse",
    "crescent",
)
_RED, _ORANGE = (40, 40, 220), (30, 140, 245)  # BGR
MANIFEST = ".yolo-kd-dataset.json"  # written into every generated dataset: what made it, so a rerun can reuse it


def _polygon(cx: float, cy: float, r: float, sides: int, rot: float) -> np.ndarray:
    a = rot + np.arange(sides) * 2 * math.pi / sides
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1).round().astype(np.int32)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A colour far from red/orange, so colour alone identifies only the disc pair."""
    while True:
        c = rng.integers(30, 256, 3)
        if not (c[2] > 150 and c[0] < 110):
            return int(c[0]), int(c[1]), int(c[2])


def _draw(img: np.ndarray, name: str, cx: float, cy: float, r: float, rng: np.random.Generator) -> None:
    """Draw one object of class ``name`` centred at (cx, cy) with radius r."""
    colour = _colour(rng)
    thick = max(1, round(r * 0.25))
    tilt = rng.uniform(-0.25, 0.25)
    if name in _SOURCE_ONLY:
        _draw_source_only(img, name, cx, cy, r, tilt, colour, thick)
    elif name.startswith("disc"):
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


_SOURCE_ONLY = frozenset(SOURCE_CLASSES) - frozenset(CLASSES)


def _draw_source_only(
    img: np.ndarray, name: str, cx: float, cy: float, r: float, tilt: float, colour: tuple, thick: int
) -> None:
    """The source domain's own classes (never drawn in ``kdshapes``)."""
    c = (round(cx), round(cy))
    if name == "star":  # five points: outer and inner radius alternate
        outer = _polygon(cx, cy, r, 5, -math.pi / 2 + tilt)
        inner = _polygon(cx, cy, r * 0.42, 5, -math.pi / 2 + math.pi / 5 + tilt)
        pts = np.stack([outer, inner], 1).reshape(-1, 2)
        cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
    elif name == "ring":
        cv2.circle(img, c, round(r), colour, max(2, thick), cv2.LINE_AA)
    elif name == "diamond":  # a rhombus, taller than wide
        pts = _polygon(0, 0, r, 4, math.pi / 2 + tilt).astype(np.float32) * np.array([0.6, 1.0], np.float32)
        cv2.fillPoly(img, [(pts + np.array([cx, cy])).round().astype(np.int32)], colour, cv2.LINE_AA)
    elif name == "pentagon":
        cv2.fillPoly(img, [_polygon(cx, cy, r, 5, -math.pi / 2 + tilt)], colour, cv2.LINE_AA)
    elif name == "bar":
        axes = (round(r), max(1, round(r * 0.22)))
        box = cv2.boxPoints(((cx, cy), (2 * axes[0], 2 * axes[1]), math.degrees(tilt)))
        cv2.fillPoly(img, [box.round().astype(np.int32)], colour, cv2.LINE_AA)
    elif name == "ellipse":
        cv2.ellipse(img, c, (round(r), max(1, round(r * 0.55))), math.degrees(tilt), 0, 360, colour, -1, cv2.LINE_AA)
    else:  # crescent: the polygon between a half circle and a flatter half ellipse
        a = np.linspace(-math.pi / 2, math.pi / 2, 24) + tilt
        outer = np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)
        inner = np.stack([cx + 0.45 * r * np.cos(a[::-1]), cy + r * np.sin(a[::-1])], 1)
        cv2.fillPoly(img, [np.concatenate([outer, inner]).round().astype(np.int32)], colour, cv2.LINE_AA)


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


def _striped_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """The source domain's backgrounds: dark, cool-toned stripes at a random angle and pitch, plus pixel noise."""
    base = rng.integers(20, 110, 3).astype(np.float32) * np.array([1.3, 1.0, 0.6], np.float32)  # BGR: blue-ish
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, pitch = rng.uniform(0, math.pi), rng.uniform(size / 12, size / 4)
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / pitch)
    img = base + rng.uniform(10, 35) * stripes[..., None] + rng.normal(0, 8, (size, size, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Domain:
    """What one generated domain draws.

    Attributes:
        classes: Class names, in label-index order.
        radius: Smallest and largest object radius as a fraction of the image side (drawn log-uniform).
        objects: Object count per image, ``[low, high)``.
        background: Draws an empty ``(size, size, 3)`` BGR background from the image's generator.
        stream: Mixed into every image's seed, so two domains never share an image generator.
    """

    classes: tuple[str, ...]
    radius: tuple[float, float]
    objects: tuple[int, int]
    background: Callable[[np.random.Generator, int], np.ndarray]
    stream: tuple[int, ...] = ()


DOMAINS = {
    "kdshapes": Domain(CLASSES, (0.025, 0.22), (2, 9), _background),
    "source": Domain(SOURCE_CLASSES, (0.06, 0.3), (1, 6), _striped_background, stream=(1,)),
}


def make_image(
    seed: int, index: int, size: int, domain: str = "kdshapes"
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """Draw image ``index`` of a domain's dataset with ``seed``.

    Args:
        seed: Dataset seed.
        index: Image index (validation images use indices from 1,000,000 on).
        size: Image side in pixels.
        domain: A key of ``DOMAINS``.

    Returns:
        The BGR image and its YOLO labels ``(cls, xc, yc, w, h)``, normalised.
    """
    dom = DOMAINS[domain]
    rng = np.random.default_rng([seed, index, *dom.stream])
    img = dom.background(rng, size)
    owner = np.full((size, size), -1, np.int32)  # which object each pixel shows, to measure occlusion
    objects = []
    r_lo, r_hi = math.log(dom.radius[0]), math.log(dom.radius[1])
    for k in range(int(rng.integers(*dom.objects))):
        cls = int(rng.integers(len(dom.classes)))
        r = float(size * math.exp(rng.uniform(r_lo, r_hi)))  # tiny to large, log-uniform
        cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
        mask = np.zeros((size, size), np.uint8)
        name = dom.classes[cls]
        _draw(mask, name, cx, cy, r, np.random.default_rng([seed, index, k, *dom.stream]))  # the footprint
        _draw(img, name, cx, cy, r, np.random.default_rng([seed, index, k, *dom.stream]))
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


def is_image_name(name: str | Path) -> bool:
    """Whether a file name has a suffix Ultralytics reads as an image (its rule for folders and list files alike)."""
    from ultralytics.data.utils import IMG_FORMATS

    _, dot, suffix = str(name).rpartition(".")
    return bool(dot) and suffix.lower() in IMG_FORMATS


def image_files(folder: str | Path) -> list[Path]:
    """Every image Ultralytics can read under ``folder``, recursively, sorted.

    Hidden files and folders (``._x.jpg`` of macOS, ``.thumbnails/``) are left out, as Ultralytics' glob leaves them.
    """
    root = Path(folder)
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and is_image_name(p.name) and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that decides a generated dataset's bytes (recorded in its folder as ``MANIFEST``)."""

    domain: str
    n_train: int
    n_val: int
    imgsz: int
    seed: int


def make_dataset(
    root: str | Path = "datasets",
    name: str = "kdshapes",
    n_train: int = 400,
    n_val: int = 100,
    imgsz: int = 160,
    seed: int = 0,
    domain: str = "kdshapes",
) -> Path:
    """Generate ``root/name/{images,labels}/{train,val}`` and ``root/name.yaml``; return the YAML path.

    The dataset is written into a private temporary folder and moved into place whole, so a kill never leaves half a
    dataset under the final name. A folder this function generated earlier with the same settings is reused as it is
    (nothing is rewritten); any other existing ``root/name`` or ``root/name.yaml`` (another size, another seed, or
    the user's own data) is refused, never overwritten.

    Args:
        root: Folder that receives the dataset folder and its YAML.
        name: Dataset name (folder and YAML stem).
        n_train: Training images.
        n_val: Validation images.
        imgsz: Image side in pixels.
        seed: Dataset seed: the same arguments give the same bytes.
        domain: A key of ``DOMAINS``: ``kdshapes`` (the target task) or ``source`` (the pretraining domain).

    Returns:
        Path of the data YAML.

    Raises:
        KDConfigError: An unknown domain, bad counts, or an existing folder or YAML that this call may not replace.
    """
    from .config import KDConfigError

    if not isinstance(domain, str) or domain not in DOMAINS:
        raise KDConfigError(f"domain={domain!r} is unknown; choose one of {sorted(DOMAINS)}")
    for key, value in (("n_train", n_train), ("n_val", n_val), ("imgsz", imgsz), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise KDConfigError(f"{key}={value!r}: give a whole number")
    if min(n_train, n_val) < 1 or imgsz < 32:
        raise KDConfigError(f"n_train={n_train}, n_val={n_val}, imgsz={imgsz}: need n_train, n_val >= 1, imgsz >= 32")
    spec = DatasetSpec(domain, n_train, n_val, imgsz, seed)
    root = Path(root)
    base, yaml_path = root / name, root / f"{name}.yaml"
    # no 'path' key: Ultralytics then resolves train/val against the YAML's own folder, wherever the repo lives
    names = dict(enumerate(DOMAINS[domain].classes))
    yaml_text = yaml.safe_dump(
        {"train": f"{name}/images/train", "val": f"{name}/images/val", "names": names}, sort_keys=False
    )
    # a YAML with exactly the text this call writes (the repository's committed datasets/kdshapes.yaml) is not the
    # user's data: it is kept as it is and only the images are generated beside it
    same_yaml = yaml_path.is_file() and yaml_path.read_text() == yaml_text
    if base.exists() or (yaml_path.exists() and not same_yaml):
        recorded = _read_manifest(base)
        if recorded == asdict(spec) and (same_yaml or not yaml_path.exists()):
            # the YAML may be missing only in the moment between another process moving its folder in and writing it
            _write_yaml_once(yaml_path, yaml_text)
            return yaml_path
        what = f"generated with other settings ({recorded})" if recorded else "not generated by yolo-kd"
        raise KDConfigError(
            f"{base if base.exists() else yaml_path} already exists and was {what}; yolo-kd does not replace it: "
            "choose another name= or root=, or remove it yourself"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of this very name is ours: an earlier process with our pid
    try:
        _write_images(tmp, spec)
        (tmp / MANIFEST).write_text(json.dumps(asdict(spec)))
        os.replace(tmp, base)  # whole, or not at all
    except OSError as err:
        # another process generated the same dataset at the same time and moved its folder in first: it keeps its
        # folder (the same bytes, if it was made with these settings) and ours is dropped
        if _read_manifest(base) != asdict(spec):
            raise KDConfigError(
                f"{base} appeared while this dataset was generated, made with other settings "
                f"({_read_manifest(base)}); yolo-kd does not replace it"
            ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not same_yaml:
        _write_yaml_once(yaml_path, yaml_text)
    return yaml_path


def _write_yaml_once(path: Path, text: str) -> None:
    """Write a dataset YAML whole, unless one appeared meanwhile (another process's, with the same text)."""
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # fails if the file appeared since: that one is kept, never replaced
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _read_manifest(base: Path) -> dict | None:
    """The settings a yolo-kd dataset folder was generated with, or None for any other folder."""
    try:
        return json.loads((base / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _write_images(base: Path, spec: DatasetSpec) -> None:
    """Draw every image and label file of ``spec`` under ``base``."""
    for split, count, offset in (("train", spec.n_train, 0), ("val", spec.n_val, 1_000_000)):
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, labels = make_image(spec.seed, offset + i, spec.imgsz, spec.domain)
            stem = f"{split}_{i:05d}"
            cv2.imwrite(str(base / "images" / split / f"{stem}.png"), img)
            text = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)
            (base / "labels" / split / f"{stem}.txt").write_text(text)

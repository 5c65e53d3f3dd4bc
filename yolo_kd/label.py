"""``yolo-kd label``: the teacher annotates a folder of images as a NEW YOLO-format dataset.

Layout of the dataset it writes (``out``, default ``<source>_labelled`` beside the source folder)::

    out/images/train/<flat name>           links to the source images (copies where links are not possible)
    out/images/val/<flat name>             the validation split (none when ``val=`` names your own folder)
    out/labels/{train,val}/...txt          the teacher's boxes, where Ultralytics looks for them
    out/data.yaml                          written last: a dataset exists under its final name only when complete
    out/.yolo_kd_label.json                the settings it was labelled with (a rerun with the same ones resumes)

A flat name is the image's path under the source with ``__`` for ``/`` (``cam1/a.jpg`` -> ``cam1__a.jpg``), so a
source that is itself a dataset (``images/train/...``) cannot make Ultralytics look for labels inside ``images/``.
The source folder, its label files and any data YAML beside it are only ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .classes import class_pairs, name_list
from .config import KDConfigError, load_kd_config
from .dataset import image_files
from .files import write_text_atomic
from .inputs import check_writable, read_yaml
from .teacher import file_sha256, load_teacher_model
from .vocabulary import Vocabulary, apply_vocabulary, is_open_vocabulary, open_vocabulary_teacher

MARKER = ".yolo_kd_label.json"


@dataclass
class LabelRequest:
    """What ``label_folder`` was asked for (its arguments, documented there)."""

    model: str | Path
    source: str | Path
    out: str | Path | None
    conf: float
    iou: float
    imgsz: int | None
    names: str | Path | None
    prompts: str | dict | None
    embeddings: str | Path | None
    device: str | None
    batch: int
    val: str | Path | None
    val_fraction: float
    seed: int
    overwrite: bool


@dataclass
class LabelPlan:
    """Everything decided before the first file is written.

    Attributes:
        out: The dataset folder to write.
        settings: What the labels depend on (recorded in ``out/MARKER``; a rerun with equal settings resumes).
        images: Source image -> its link in ``out`` (train and val splits).
        labels: Source image -> its label file in ``out``.
        names: The dataset's class names.
        keep: Teacher class index -> dataset class index (teacher classes absent from ``names`` are dropped).
        val: The ``val`` entry of the data YAML (the split folder, or the user's own ``val=`` folder).
        vocabulary: An open-vocabulary teacher's prompts and embeddings (None for a closed-set teacher).
    """

    out: Path
    settings: dict[str, Any]
    images: dict[Path, Path]
    labels: dict[Path, Path]
    names: list[str]
    keep: dict[int, int]
    val: str
    resume: bool = False
    vocabulary: Vocabulary | None = None


@dataclass
class LabelTally:
    """What a labelling pass did."""

    labelled: int = 0
    skipped: int = 0
    unreadable: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    confidences: list[float] = field(default_factory=list)


def label_folder(
    model: str | Path,
    source: str | Path,
    out: str | Path | None = None,
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int | None = None,
    names: str | Path | None = None,
    prompts: str | dict | None = None,
    embeddings: str | Path | None = None,
    device: str | None = None,
    batch: int = 16,
    val: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Label every image under ``source`` with the teacher, as a new dataset in ``out`` (layout: module docstring).

    Args:
        model: Teacher checkpoint.
        source: Folder of images (searched recursively). Only read.
        out: Folder of the new dataset (default ``<source>_labelled`` beside ``source``). It must be new, empty, or
            a dataset this command labelled with the same settings (then the run resumes where it stopped).
        conf: Keep boxes with at least this confidence.
        iou: NMS IoU threshold.
        imgsz: Inference size (default: the teacher's training size).
        names: A data YAML whose class names the labels should use (teacher classes are mapped to them by name;
            classes it lacks are dropped). Default: the teacher's own names. An open-vocabulary teacher (YOLO-World,
            YOLOE) needs it: it is prompted with these names.
        prompts: Open-vocabulary teachers: class -> other prompt words (``kd_teacher_prompts``: a dict or a YAML
            file; a class scores as the max over its prompts).
        embeddings: Open-vocabulary teachers: a prompt -> vector file (``kd_teacher_embeddings``, written by
            ``yolo-kd embed``); without it the text encoder is used if its weights are on disk.
        device: Inference device (Ultralytics' ``device=``).
        batch: Images per inference call.
        val: A folder of your own validation images (with their labels), used as the dataset's ``val`` unchanged.
            Default: a ``val_fraction`` of the source images, held out of training.
        val_fraction: Share of the source images held out for validation when ``val`` is not given.
        seed: Seed of that split (the same seed gives the same split).
        overwrite: Write into an ``out`` that is not empty and not labelled with these settings (its files of the
            same names are replaced). Default False: such an ``out`` is refused.

    Returns:
        A summary (also logged): images, labelled now, skipped (already labelled), unreadable, boxes per class,
        a confidence histogram, the data YAML.
    """
    from ultralytics.utils import LOGGER

    req = LabelRequest(
        model=model,
        source=source,
        out=out,
        conf=conf,
        iou=iou,
        imgsz=imgsz,
        names=names,
        prompts=prompts,
        embeddings=embeddings,
        device=device,
        batch=batch,
        val=val,
        val_fraction=val_fraction,
        seed=seed,
        overwrite=overwrite,
    )
    plan = plan_labels(req)
    tally = run_teacher(plan, req)
    yaml_path = write_data_yaml(plan)
    summary = _summary(plan, tally, conf, yaml_path)
    LOGGER.info(
        f"yolo-kd label: {summary['labelled_now']} images labelled, {summary['skipped_already_labelled']} already "
        f"labelled, {len(tally.unreadable)} unreadable"
        f"{': ' + ', '.join(tally.unreadable) if tally.unreadable else ''}\n"
        f"boxes per class: {summary['boxes_per_class']}\nconfidence histogram: {summary['confidence_histogram']}\n"
        f"data YAML: {yaml_path}"
    )
    return summary


def plan_labels(req: LabelRequest) -> LabelPlan:
    """Check every input and decide every path; nothing is written.

    Args:
        req: What was asked for.

    Returns:
        The plan ``run_teacher`` and ``write_data_yaml`` carry out.
    """
    _check_numbers(req.conf, req.iou, req.batch, req.val_fraction)
    src, files, dst = _source_and_out(req)
    own_val = _own_val(req.val, src)
    student_names = _names_file(req.names) if req.names is not None else None
    names, keep, imgsz, vocab = _classes_and_size(req, student_names)
    images = _split(files, src, dst, None if own_val else req.val_fraction, req.seed)
    labels = _label_paths(images, src)
    settings = {
        "source": str(src),
        # the split is drawn from the file list: another list would move images between splits on resume
        "images": hashlib.sha256("\n".join(str(f.relative_to(src)) for f in files).encode()).hexdigest(),
        "model_sha256": file_sha256(req.model),
        "conf": req.conf,
        "iou": req.iou,
        "imgsz": imgsz,
        "names": names,
        "val": own_val,
        "val_fraction": None if own_val else req.val_fraction,
        "seed": None if own_val else req.seed,
    }
    if vocab is not None:  # other prompts or embeddings are other labels: no resume across them
        settings["vocabulary_sha256"] = vocab.sha256
    resume = _check_out(dst, settings, req.overwrite)
    if req.overwrite and not resume:
        _check_nothing_stale(dst, {*images.values(), *labels.values()})
    val = own_val or str(dst / "images" / "val")
    return LabelPlan(dst, settings, images, labels, names, keep, val, resume, vocab)


def _source_and_out(req: LabelRequest) -> tuple[Path, list[Path], Path]:
    """The source folder (absolute), its images, and the output folder, which must lie outside it."""
    src = Path(req.source).resolve()
    if not src.is_dir():
        raise KDConfigError(f"source={req.source}: not a folder")
    files = image_files(src)
    if not files:
        raise KDConfigError(f"source={req.source}: no images in it")
    dst = Path(req.out).resolve() if req.out is not None else src.with_name(f"{src.name}_labelled")
    if dst == src or src in dst.parents:
        raise KDConfigError(f"out={dst}: inside source={req.source}; give an out= folder outside it")
    return src, files, dst


def _classes_and_size(
    req: LabelRequest, student_names: list[str] | None
) -> tuple[list[str], dict[int, int], int, Vocabulary | None]:
    """The dataset's class names, teacher class -> dataset class, the inference size and an open-vocabulary teacher's
    vocabulary (prompted with the dataset's class names, as in training), from the teacher."""
    teacher = load_teacher_model(req.model)  # refuses files that are not detection checkpoints
    imgsz = int(req.imgsz or teacher.args.get("imgsz", 640))
    # the same checks (one line each) and the same vocabulary code as the trainer's kd_teacher_* keys
    cfg = load_kd_config(kd_teacher_prompts=req.prompts, kd_teacher_embeddings=req.embeddings)
    vocab = None
    if is_open_vocabulary(teacher):
        if student_names is None:
            raise KDConfigError(f"model={req.model} is an open-vocabulary model: give names=data.yaml to prompt it")
        vocab = open_vocabulary_teacher(
            teacher, student_names, cfg.kd_teacher_prompts, cfg.kd_teacher_embeddings, req.model
        )
    elif req.prompts is not None or req.embeddings is not None:
        raise KDConfigError(f"prompts=/embeddings= are for open-vocabulary models; model={req.model} has fixed classes")
    t_names = name_list(teacher.names)
    if student_names is None:
        return t_names, {i: i for i in range(len(t_names))}, imgsz, vocab
    return student_names, {t: s for s, t in class_pairs(student_names, t_names)}, imgsz, vocab


def _check_numbers(conf: float, iou: float, batch: int, val_fraction: float) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise KDConfigError(f"batch={batch}: give a whole number of images per inference call, 1 or more")
    for key, value in (("conf", conf), ("iou", iou)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise KDConfigError(f"{key}={value}: give a number in (0, 1]")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise KDConfigError(f"val_fraction={val_fraction}: give a number in (0, 1), or val=FOLDER of your own")


def _names_file(names: str | Path) -> list[str]:
    """Class names from the student's data YAML (``names:`` as a list or an index -> name mapping)."""
    data = read_yaml("names", names)
    found = name_list(data.get("names")) if isinstance(data, dict) else []
    if not found:
        raise KDConfigError(f"names={names}: has no 'names' list of classes; give the student's data YAML")
    return [str(n) for n in found]


def _own_val(val: str | Path | None, src: Path) -> str | None:
    """The user's own validation folder (absolute), refused when it shares images with the source."""
    if val is None:
        return None
    v = Path(val).resolve()
    if not v.is_dir():
        raise KDConfigError(f"val={val}: not a folder; give a folder of validation images (with their labels)")
    if not image_files(v):
        raise KDConfigError(f"val={val}: no images in it")
    if v == src or src in v.parents or v in src.parents:
        raise KDConfigError(f"val={val}: overlaps source={src}; validation images must not be training images")
    return str(v)


def _check_out(dst: Path, settings: dict[str, Any], overwrite: bool) -> bool:
    """Whether ``out`` is our unfinished or finished dataset with equal settings (resume); refuse foreign folders.

    Returns:
        True to resume (keep the labels already there), False for a fresh (or explicitly overwritten) dataset.
    """
    check_writable("out", dst)
    if not dst.exists() or not any(dst.iterdir()):
        return False
    marker = dst / MARKER
    try:
        recorded = json.loads(marker.read_text()) if marker.is_file() else None
    except (OSError, ValueError):
        recorded = None  # an edited or foreign marker: treat the folder as not ours
    if recorded == settings:
        return True
    if overwrite:
        return False
    if recorded is None:
        raise KDConfigError(
            f"out={dst}: exists and is not a dataset yolo-kd labelled; give a new out= folder "
            "(or overwrite=True to write into it)"
        )
    changed = sorted(k for k in settings if recorded.get(k) != settings[k])
    raise KDConfigError(
        f"out={dst}: was labelled with other settings ({', '.join(changed)} differ); give a new out= folder "
        "(or overwrite=True to relabel it)"
    )


def _check_nothing_stale(dst: Path, planned: set[Path]) -> None:
    """Refuse an overwrite that would leave images or labels of another split or source mixed into the new dataset.

    Args:
        dst: The ``out`` folder.
        planned: Every image link and label file this run writes.
    """
    stale = sorted(
        p for sub in ("images", "labels") for p in (dst / sub).rglob("*") if not p.is_dir() and p not in planned
    )
    if stale:
        raise KDConfigError(
            f"out={dst}: holds {len(stale)} image or label file(s) this run would not replace (e.g. "
            f"{stale[0].relative_to(dst)}), which would mix into the new dataset; give a new out= folder"
        )


def _split(files: list[Path], src: Path, dst: Path, val_fraction: float | None, seed: int) -> dict[Path, Path]:
    """Source image -> its link under ``out/images/{train,val}``; the split is seeded (same seed, same split)."""
    if val_fraction is None:
        val = set()
    else:
        n_val = max(1, round(val_fraction * len(files)))
        if n_val >= len(files):
            raise KDConfigError(
                f"source={src}: {len(files)} image(s) leave none for training after a {val_fraction} validation "
                "split; add images or give val=FOLDER"
            )
        val = set(random.Random(seed).sample(files, n_val))
    return {f: dst / "images" / ("val" if f in val else "train") / "__".join(f.relative_to(src).parts) for f in files}


def _label_paths(images: dict[Path, Path], src: Path) -> dict[Path, Path]:
    """Source image -> its label file, by Ultralytics' own rule; refuse two images that would share one label."""
    from ultralytics.data.utils import img2label_paths

    labels = dict(zip(images, (Path(p) for p in img2label_paths([str(p) for p in images.values()]))))
    seen: dict[Path, Path] = {}
    for image, label in labels.items():
        if label in seen:
            a, b = seen[label].relative_to(src), image.relative_to(src)
            raise KDConfigError(
                f"source={src}: {a} and {b} would share one label file ({label.name}); rename or remove one"
            )
        seen[label] = image
    return labels


def _link(image: Path, link: Path, resume: bool) -> None:
    """Link ``link`` to the source image (a copy, moved into place, where the file system has no links).

    Args:
        image: The source image.
        link: Its path in the new dataset.
        resume: The run resumes one with equal settings, so an existing file at ``link`` is this image's copy.
    """
    if link.exists() and (resume or os.path.samefile(link, image)):
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    # A run killed between link and move leaves its temporary link; copying through it would write into its target.
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(image, tmp)
    except OSError:  # a file system without symbolic links
        shutil.copy2(image, tmp)
    os.replace(tmp, link)


def _box_lines(result: Any, keep: dict[int, int], tally: LabelTally) -> str:
    """YOLO label lines for one prediction, teacher classes mapped to the dataset's (unmapped ones dropped)."""
    lines = []
    boxes = result.boxes
    for c, xywhn, p in zip(boxes.cls.tolist(), boxes.xywhn.tolist(), boxes.conf.tolist()):
        if int(c) not in keep:
            continue
        cls = keep[int(c)]
        lines.append(f"{cls} {xywhn[0]:.6f} {xywhn[1]:.6f} {xywhn[2]:.6f} {xywhn[3]:.6f}\n")
        tally.counts[cls] += 1
        tally.confidences.append(p)
    return "".join(lines)


def run_teacher(plan: LabelPlan, req: LabelRequest) -> LabelTally:
    """Predict every image not yet labelled, write its label, then link the image beside it.

    Args:
        plan: From ``plan_labels``.
        req: The teacher, thresholds, device and batch size asked for.

    Returns:
        What was labelled, skipped and unreadable, with box counts and confidences.
    """
    import cv2
    from ultralytics import YOLO
    from ultralytics.utils import TQDM

    plan.out.mkdir(parents=True, exist_ok=True)
    if not plan.resume:
        write_text_atomic(plan.out / MARKER, json.dumps(plan.settings, indent=2))
    tally = LabelTally()
    todo = []
    for image in plan.images:
        if plan.resume and plan.labels[image].is_file():
            _link(image, plan.images[image], resume=True)
            tally.skipped += 1
        else:
            todo.append(image)
    detector = YOLO(str(req.model), task="detect")
    if plan.vocabulary is not None:
        apply_vocabulary(detector.model, plan.vocabulary)
        # Ultralytics' wrapper keeps the checkpoint's task (YOLOE-seg: 'segment'); the model is now a detector
        detector.task = detector.overrides["task"] = "detect"
    step = req.batch
    for i in TQDM(range(0, len(todo), step), desc="yolo-kd label", total=(len(todo) + step - 1) // step):
        chunk, arrays = [], []
        for f in todo[i : i + step]:
            im = cv2.imread(str(f))
            if im is None:
                tally.unreadable.append(str(f))
                continue
            chunk.append(f)
            arrays.append(im)
        if not arrays:
            continue
        imgsz = plan.settings["imgsz"]
        # class-aware NMS, as for any detector (Ultralytics' YOLOE wrapper defaults to class-agnostic)
        results = detector.predict(
            arrays, conf=req.conf, iou=req.iou, imgsz=imgsz, device=req.device, agnostic_nms=False, verbose=False
        )
        for f, r in zip(chunk, results):
            write_text_atomic(plan.labels[f], _box_lines(r, plan.keep, tally))
            # the image is linked after its label: a linked image never passes for an unlabelled background image
            _link(f, plan.images[f], plan.resume)
            tally.labelled += 1
    return tally


def write_data_yaml(plan: LabelPlan) -> Path:
    """Write ``out/data.yaml`` last, so a dataset under its final name is always complete.

    A resumed run keeps the data YAML its earlier run wrote (the user may have edited it since, as they may the labels)
    unless its ``path:`` names another folder: the dataset was moved, and a kept YAML would train on the old place.
    (Without ``path:``, Ultralytics reads the splits beside the YAML, which moves with the dataset: kept.)

    Args:
        plan: From ``plan_labels``.

    Returns:
        The data YAML's path.
    """
    data = {
        "path": str(plan.out),
        "train": "images/train",
        "val": plan.val,
        "names": dict(enumerate(plan.names)),
    }
    path = plan.out / "data.yaml"
    if not (plan.resume and _points_here(path, plan.out)):
        write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))
    return path


def _points_here(data_yaml: Path, out: Path) -> bool:
    """Whether ``data_yaml`` exists, parses, and its ``path:`` (if any) is ``out`` (a moved dataset's YAML is not)."""
    try:
        path = (yaml.safe_load(data_yaml.read_text()) or {}).get("path")
    except (OSError, yaml.YAMLError, AttributeError):
        return False
    return path is None or Path(str(path)).expanduser().resolve() == out.resolve()


def _summary(plan: LabelPlan, tally: LabelTally, conf: float, yaml_path: Path) -> dict[str, Any]:
    if tally.confidences:
        hist, edges = np.histogram(tally.confidences, bins=5, range=(conf, 1.0))
        histogram = {f"{edges[k]:.2f}-{edges[k + 1]:.2f}": int(hist[k]) for k in range(len(hist))}
    else:
        histogram = {}
    splits = Counter(link.parent.relative_to(plan.out / "images").parts[0] for link in plan.images.values())
    return {
        "images": len(plan.images),
        "labelled_now": tally.labelled,
        "skipped_already_labelled": tally.skipped,
        "unreadable": tally.unreadable,
        "train_images": splits["train"],
        "val_images": splits["val"],  # 0 when val= names the user's own folder
        "val": plan.val,
        "boxes_per_class": {plan.names[c]: n for c, n in sorted(tally.counts.items())},
        "confidence_histogram": histogram,
        "out": str(plan.out),
        "yaml": str(yaml_path),
    }

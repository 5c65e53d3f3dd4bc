"""``yolo-kd label``: the teacher annotates a folder of images as a YOLO-format dataset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .classes import class_pairs, name_list
from .config import KDConfigError
from .dataset import image_files
from .teacher import load_teacher_model


def label_folder(
    model: str | Path,
    source: str | Path,
    conf: float = 0.25,
    iou: float = 0.7,
    out: str | Path | None = None,
    imgsz: int | None = None,
    names: str | Path | None = None,
    device: str | None = None,
    batch: int = 16,
) -> dict[str, Any]:
    """Label every image under ``source`` with the teacher; write ``<image>.txt`` beside each and a data YAML.

    Args:
        model: Teacher checkpoint.
        source: Folder of images (searched recursively).
        conf: Keep boxes with at least this confidence. iou: NMS IoU threshold.
        out: Path of the data YAML to write (default: ``<source>.yaml`` beside the folder).
        imgsz: Inference size (default: the teacher's training size).
        names: A data YAML whose class names the labels should use (teacher classes are mapped to them by name;
            classes the student lacks are dropped). Default: the teacher's own names.

    Images that already have a label file are skipped (so an interrupted run resumes); unreadable images are listed
    and skipped. Returns a summary dict, also printed.
    """
    import cv2
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER, TQDM

    src = Path(source)
    if not src.is_dir():
        raise KDConfigError(f"source={source}: not a folder")
    files = image_files(src)
    if not files:
        raise KDConfigError(f"source={source}: no images in it")
    teacher = load_teacher_model(model)
    t_names = name_list(teacher.names)
    if names is not None:
        s_names = name_list(yaml.safe_load(Path(names).read_text())["names"])
        keep = {t: s for s, t in class_pairs(s_names, t_names)}
    else:
        s_names, keep = t_names, {i: i for i in range(len(t_names))}
    imgsz = int(imgsz or teacher.args.get("imgsz", 640))
    del teacher

    from ultralytics.data.utils import img2label_paths

    # write each label where Ultralytics will look for it: beside the image, or under labels/ for an images/ tree
    label_of = dict(zip(files, (Path(p) for p in img2label_paths([str(f) for f in files]))))
    todo = [f for f in files if not label_of[f].exists()]
    detector = YOLO(str(model), task="detect")
    counts: Counter[int] = Counter()
    confidences: list[float] = []
    unreadable: list[str] = []
    for i in TQDM(range(0, len(todo), batch), desc="yolo-kd label", total=(len(todo) + batch - 1) // batch):
        chunk, images = [], []
        for f in todo[i : i + batch]:
            im = cv2.imread(str(f))
            if im is None:
                unreadable.append(str(f))
                continue
            chunk.append(f)
            images.append(im)
        if not images:
            continue
        results = detector.predict(images, conf=conf, iou=iou, imgsz=imgsz, device=device, verbose=False)
        for f, r in zip(chunk, results):
            lines = []
            boxes = r.boxes
            for c, xywhn, p in zip(boxes.cls.tolist(), boxes.xywhn.tolist(), boxes.conf.tolist()):
                if int(c) not in keep:
                    continue
                cls = keep[int(c)]
                lines.append(f"{cls} {xywhn[0]:.6f} {xywhn[1]:.6f} {xywhn[2]:.6f} {xywhn[3]:.6f}\n")
                counts[cls] += 1
                confidences.append(p)
            label = label_of[f]
            label.parent.mkdir(parents=True, exist_ok=True)
            tmp = label.with_suffix(".txt.tmp")
            tmp.write_text("".join(lines))
            tmp.replace(label)  # a kill never leaves a half label that resume would trust

    yaml_path = Path(out) if out else src.parent / f"{src.name}.yaml"
    data = {"path": str(src.resolve()), "train": ".", "val": ".", "names": dict(enumerate(s_names))}
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    hist, edges = np.histogram(confidences, bins=5, range=(conf, 1.0)) if confidences else (np.zeros(5), None)
    summary = {
        "images": len(files),
        "labelled_now": len(todo) - len(unreadable),
        "skipped_already_labelled": len(files) - len(todo),
        "unreadable": unreadable,
        "boxes_per_class": {s_names[c]: n for c, n in sorted(counts.items())},
        "confidence_histogram": {f"{edges[k]:.2f}-{edges[k + 1]:.2f}": int(hist[k]) for k in range(len(hist))}
        if edges is not None
        else {},
        "yaml": str(yaml_path),
    }
    LOGGER.info(
        f"yolo-kd label: {summary['labelled_now']} images labelled, {summary['skipped_already_labelled']} already "
        f"labelled, {len(unreadable)} unreadable{': ' + ', '.join(unreadable) if unreadable else ''}\n"
        f"boxes per class: {summary['boxes_per_class']}\nconfidence histogram: {summary['confidence_histogram']}\n"
        f"data YAML: {yaml_path}"
    )
    return summary

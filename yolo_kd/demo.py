"""``yolo-kd demo``: the whole job offline, from a generated dataset to a report.

dataset (generated if missing) -> teacher (trained once, then reused) -> baseline and distilled students (same seed,
epochs, settings) -> validation of all three -> ONNX export of the distilled student (when the export extra is
installed) -> ``report.md`` and ``report.png`` in the project folder.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from ultralytics import YOLO
from ultralytics.utils import LOGGER, colorstr

from .dataset import make_dataset
from .trainer import KDDetectionTrainer

DEFAULTS: dict[str, Any] = {
    "epochs": 15,
    "teacher_epochs": 30,
    "imgsz": 128,
    "batch": 16,
    "n_train": 300,
    "n_val": 100,
    "teacher": None,
    "teacher_model": "yolov8s.yaml",
    "student": "yolov8n.yaml",
    "kd": "default",
    "project": "runs/demo",
    "data_root": "datasets",
    "device": None,
    "seed": 0,
}


def _stage(i: int, n: int, text: str) -> None:
    LOGGER.info(f"\n{colorstr('bold', 'blue', f'yolo-kd demo [{i}/{n}]')} {text}")


def _metrics(model: YOLO, data: str, imgsz: int, batch: int, device: Any, project: Path, name: str) -> dict[str, float]:
    m = model.val(
        data=data,
        imgsz=imgsz,
        batch=batch,
        device=device,
        plots=False,
        project=str(project),
        name=name,
        exist_ok=True,
        verbose=False,
    )
    return {"mAP50": float(m.box.map50), "mAP50-95": float(m.box.map)}


def run_demo(**overrides: Any) -> Path:
    """Run the demo; returns the path of ``report.md``. Keys: see ``DEFAULTS``."""
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        from .config import KDConfigError

        raise KDConfigError(f"unknown demo key(s) {unknown}; valid: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **overrides}
    project = Path(cfg["project"]).resolve()
    project.mkdir(parents=True, exist_ok=True)
    imgsz, batch, device, seed = cfg["imgsz"], cfg["batch"], cfg["device"], cfg["seed"]
    common = dict(imgsz=imgsz, batch=batch, device=device, workers=0, plots=False, project=str(project), exist_ok=True)
    n, t0 = 6, time.time()

    _stage(1, n, "dataset")
    name = f"kdshapes_{imgsz}"
    data = Path(cfg["data_root"]) / f"{name}.yaml"
    if not (data.is_file() and (Path(cfg["data_root"]) / name / "images" / "val").is_dir()):
        data = make_dataset(cfg["data_root"], name, cfg["n_train"], cfg["n_val"], imgsz, seed=0)
    else:
        LOGGER.info(f"reusing {data}")
    data = str(data)

    _stage(2, n, "teacher")
    teacher = cfg["teacher"]
    if teacher is None:
        tname = f"teacher_{Path(cfg['teacher_model']).stem}_e{cfg['teacher_epochs']}_{imgsz}"
        teacher = str(project / tname / "weights" / "best.pt")
        if Path(teacher).is_file():
            LOGGER.info(f"reusing cached teacher {teacher}")
        else:
            YOLO(cfg["teacher_model"]).train(data=data, epochs=cfg["teacher_epochs"], seed=seed, name=tname, **common)

    _stage(3, n, "baseline student (no distillation)")
    baseline = YOLO(cfg["student"])
    baseline.train(data=data, epochs=cfg["epochs"], seed=seed, name="baseline", **common)

    _stage(4, n, f"distilled student (kd={cfg['kd']})")
    distilled = YOLO(cfg["student"])
    distilled.train(
        trainer=KDDetectionTrainer,
        data=data,
        teacher=teacher,
        kd=cfg["kd"],
        epochs=cfg["epochs"],
        seed=seed,
        name="distilled",
        **common,
    )

    cfg = {**cfg, "student_init": distilled.trainer.student_init}

    _stage(5, n, "validation of teacher, baseline and distilled student")
    results = {
        "teacher": _metrics(YOLO(teacher), data, imgsz, batch, device, project, "val_teacher"),
        "baseline": _metrics(
            YOLO(str(project / "baseline/weights/best.pt")), data, imgsz, batch, device, project, "val_baseline"
        ),
        "distilled": _metrics(
            YOLO(str(project / "distilled/weights/best.pt")), data, imgsz, batch, device, project, "val_distilled"
        ),
    }

    _stage(6, n, "export of the distilled student")
    exported = None
    if importlib.util.find_spec("onnx") is not None:
        exported = YOLO(str(project / "distilled/weights/best.pt")).export(format="onnx", imgsz=imgsz, device="cpu")
    else:
        LOGGER.info("ONNX export skipped: install the export extra (pip install -e .[export]) to enable it")

    minutes = (time.time() - t0) / 60
    report = write_report(project, results, cfg, teacher, exported, minutes)
    LOGGER.info(report.read_text())
    return report


def _read_csv(path: Path) -> dict[str, list[float]]:
    with open(path) as f:
        rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}


def write_report(project: Path, results: dict, cfg: dict, teacher: str, exported: str | None, minutes: float) -> Path:
    """Write report.md (table) and report.png (mAP bars and training curves with every KD term)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, kd = results["baseline"]["mAP50-95"], results["distilled"]["mAP50-95"]
    gap = results["teacher"]["mAP50-95"] - base
    lines = [
        "# yolo-kd demo report",
        "",
        f"Data: generated kdshapes ({cfg['n_train']} train / {cfg['n_val']} val images, {cfg['imgsz']} px, "
        "10 classes). "
        f"Student {cfg['student']}, {cfg['epochs']} epochs, seed {cfg['seed']}; teacher `{teacher}`; kd={cfg['kd']}. "
        f"The distilled student started from {cfg['student_init']}, "
        "the baseline from a random init.",
        "",
        "| model | mAP50 | mAP50-95 |",
        "|---|---|---|",
        *(f"| {k} | {v['mAP50']:.4f} | {v['mAP50-95']:.4f} |" for k, v in results.items()),
        "",
        f"Distillation gain: {kd - base:+.4f} mAP50-95"
        + (f" ({(kd - base) / gap:.0%} of the teacher-baseline gap)." if gap > 0 else "."),
        f"Exported: `{exported}`" if exported else "Export: skipped (install the export extra).",
        f"Wall time: {minutes:.1f} min.",
        "",
        "![report](report.png)",
    ]
    (project / "report.md").write_text("\n".join(lines) + "\n")
    (project / "report.json").write_text(json.dumps(results, indent=2))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = list(results)
    axes[0].bar(names, [results[k]["mAP50-95"] for k in names], color=["#555", "#c44", "#4a4"])
    axes[0].set_title("mAP50-95 (val)")
    for i, k in enumerate(names):
        axes[0].text(i, results[k]["mAP50-95"], f"{results[k]['mAP50-95']:.3f}", ha="center", va="bottom")
    for run, style in (("baseline", "--"), ("distilled", "-")):
        csv_path = project / run / "results.csv"
        if csv_path.is_file():
            r = _read_csv(csv_path)
            axes[1].plot(r["epoch"], r["metrics/mAP50-95(B)"], style, label=run)
            if run == "distilled":
                for term in (
                    "train/box_loss",
                    "train/cls_loss",
                    "train/dfl_loss",
                    "train/kd_cls",
                    "train/kd_box",
                    "train/kd_feat",
                ):
                    if term in r:  # a term switched off by the preset stays in the legend, marked so
                        label = term.split("/")[1] + ("" if any(r[term]) else " (off)")
                        axes[2].plot(r["epoch"], r[term], label=label)
    axes[1].set_title("student mAP50-95 per epoch")
    axes[1].legend()
    axes[2].set_title("distilled student: loss terms per epoch")
    axes[2].legend(fontsize=8)
    for ax in axes[1:]:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(project / "report.png", dpi=100)
    plt.close(fig)
    return project / "report.md"

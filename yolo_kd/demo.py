"""``yolo-kd demo``: the whole job offline, from a generated dataset to a report.

dataset (generated once per size, then reused) -> teacher (trained once, then reused only when its run finished with
the same settings) -> baseline and distilled students (same seed, epochs, settings) -> validation of all three -> ONNX
export of the distilled student (when the export extra is installed) -> ``report.md`` and ``report.png`` in the project
folder. A project folder holding an earlier demo's results is redone only with ``overwrite=True``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

from ultralytics import YOLO
from ultralytics.utils import LOGGER, colorstr

from .config import KDConfigError
from .dataset import make_dataset
from .files import write_text_atomic
from .inputs import check_writable, read_checkpoint
from .teacher import load_teacher_model
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
    "overwrite": False,
}
# What a demo writes in its project folder (besides val_* and cached teacher_* runs).
DEMO_OUTPUTS = ("baseline", "distilled", "report.md", "report.png", "report.json")


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
    """Run the demo; returns the path of ``report.md``.

    Args:
        **overrides: Keys of ``DEFAULTS``; anything else is refused in one line before anything is written.

    Returns:
        The report's path.
    """
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise KDConfigError(f"unknown demo key(s) {unknown}; valid: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **overrides}
    project = Path(cfg["project"]).resolve()
    _check_models(cfg)
    check_writable("project", project)
    check_writable("data_root", cfg["data_root"])
    _check_project(project, cfg["overwrite"])
    project.mkdir(parents=True, exist_ok=True)
    common = dict(
        imgsz=cfg["imgsz"], batch=cfg["batch"], device=cfg["device"], workers=0, plots=False, project=str(project)
    )
    n, t0 = 6, time.time()

    _stage(1, n, "dataset")
    name = f"kdshapes_{cfg['n_train']}_{cfg['n_val']}_{cfg['imgsz']}"  # one dataset per size, each reused as made
    data = str(make_dataset(cfg["data_root"], name, cfg["n_train"], cfg["n_val"], cfg["imgsz"], seed=0))
    _stage(2, n, "teacher")
    teacher, _ = demo_teacher(cfg, data, project, common)
    cfg = {**cfg, "student_init": _train_students(cfg, data, teacher, common, n)}
    _stage(5, n, "validation of teacher, baseline and distilled student")
    weights = {
        "teacher": teacher,
        "baseline": str(project / "baseline/weights/best.pt"),
        "distilled": str(project / "distilled/weights/best.pt"),
    }
    results = {
        k: _metrics(YOLO(w), data, cfg["imgsz"], cfg["batch"], cfg["device"], project, f"val_{k}")
        for k, w in weights.items()
    }
    _stage(6, n, "export of the distilled student")
    exported = _export(weights["distilled"], cfg["imgsz"])
    report = write_report(project, results, cfg, teacher, exported, (time.time() - t0) / 60)
    LOGGER.info(report.read_text())
    return report


def _train_students(cfg: dict[str, Any], data: str, teacher: str, common: dict[str, Any], n: int) -> str:
    """Train the baseline and the distilled student (stages 3 and 4) with the same seed, epochs and settings.

    Returns:
        How the distilled student started (its trainer's ``student_init``).
    """
    _stage(3, n, "baseline student (no distillation)")
    runs = dict(data=data, epochs=cfg["epochs"], seed=cfg["seed"], exist_ok=True, **common)
    YOLO(cfg["student"]).train(name="baseline", **runs)
    _stage(4, n, f"distilled student (kd={cfg['kd']})")
    distilled = YOLO(cfg["student"])
    distilled.train(trainer=KDDetectionTrainer, teacher=teacher, kd=cfg["kd"], name="distilled", **runs)
    return distilled.trainer.student_init


def _check_models(cfg: dict[str, Any]) -> None:
    """Refuse, before the first stage, a teacher that is not a detection checkpoint or a model file that is missing.

    Ultralytics would download a missing ``.pt`` by name; the demo trains from YAMLs or local files only.
    """
    if cfg["teacher"] is not None:
        load_teacher_model(cfg["teacher"])
    for key in ("student", "teacher_model"):
        model = str(cfg[key])
        if not model.endswith((".yaml", ".yml")) and not Path(model).is_file():
            raise KDConfigError(f"{key}={model}: no such file (yolo-kd downloads nothing; give a model YAML or a .pt)")


def _check_project(project: Path, overwrite: bool) -> None:
    """Refuse to redo a demo over an earlier one's results unless ``overwrite=True`` (cached teachers are kept)."""
    earlier = sorted(
        p.name
        for p in (project.iterdir() if project.is_dir() else [])
        if p.name in DEMO_OUTPUTS or p.name.startswith("val_")
    )
    if earlier and not overwrite:
        raise KDConfigError(
            f"project={project}: holds an earlier demo ({', '.join(earlier)}); give overwrite=True to redo it there "
            "(its finished teachers are reused, never rewritten) or another project="
        )


def teacher_mismatch(best: Path, want: dict[str, Any]) -> str | None:
    """Why the teacher checkpoint ``best`` may not be reused for ``want``; None when it may.

    A teacher is reused only when its run finished (Ultralytics' final step strips the optimizer and records epoch
    -1) and it was trained with the requested settings.

    Args:
        best: A cached teacher's ``weights/best.pt``.
        want: The requested ``model``, ``epochs``, ``imgsz``, ``data`` and ``seed``.

    Returns:
        The reason in a few words, or None.
    """
    if not best.is_file():
        return "it has no weights/best.pt (its run stopped before the first epoch ended)"
    try:
        ckpt = read_checkpoint("teacher", best)
    except KDConfigError as e:
        return str(e)
    if ckpt.get("epoch") != -1 or ckpt.get("optimizer") is not None:
        done = int(ckpt.get("epoch") or 0) + 1
        return f"its run did not finish (stopped after epoch {done} of {want['epochs']})"
    recorded = ckpt.get("train_args") or {}
    for key, value in want.items():
        got = recorded.get(key)
        same = Path(str(got)).resolve() == Path(str(value)).resolve() if key == "data" else got == value
        if not same:
            return f"it was trained with {key}={got}, not {value}"
    return None


def demo_teacher(cfg: dict[str, Any], data: str, project: Path, common: dict[str, Any]) -> tuple[str, str]:
    """The demo's teacher: the one given, a finished cached one with these settings, or a newly trained one.

    A cached teacher run that did not finish, or was trained otherwise, is left as it is: the new teacher trains in
    the next free folder (``<name>_2``, ``<name>_3``, ...), and the log says which teacher was used and why.

    Args:
        cfg: The demo settings.
        data: The data YAML.
        project: The demo's project folder.
        common: Ultralytics train arguments shared by every run of the demo.

    Returns:
        The teacher checkpoint and how it was obtained: ``given``, ``reused`` or ``trained``.
    """
    if cfg["teacher"] is not None:
        return str(cfg["teacher"]), "given"
    want = {
        "model": cfg["teacher_model"],
        "epochs": cfg["teacher_epochs"],
        "imgsz": cfg["imgsz"],
        "data": data,
        "seed": cfg["seed"],
    }
    base = f"teacher_{Path(cfg['teacher_model']).stem}_e{cfg['teacher_epochs']}_{cfg['imgsz']}"
    name, k = base, 1
    while (project / name).exists():
        best = project / name / "weights" / "best.pt"
        why = teacher_mismatch(best, want)
        if why is None:
            LOGGER.info(f"reusing cached teacher {best}: its run finished with these settings")
            return str(best), "reused"
        k += 1
        LOGGER.info(f"not reusing cached teacher {project / name}: {why}; training a new one in {base}_{k}")
        name = f"{base}_{k}"
    if name == base:
        LOGGER.info(f"no cached teacher for these settings: training one in {project / name}")
    YOLO(cfg["teacher_model"]).train(
        data=data, epochs=cfg["teacher_epochs"], seed=cfg["seed"], name=name, exist_ok=False, **common
    )
    return str(project / name / "weights" / "best.pt"), "trained"


def _export(weights: str, imgsz: int) -> str | None:
    """ONNX export of the distilled student beside its weights, when the export extra is installed."""
    if importlib.util.find_spec("onnx") is None:
        LOGGER.info("ONNX export skipped: install the export extra (pip install -e .[export]) to enable it")
        return None
    return YOLO(weights).export(format="onnx", imgsz=imgsz, device="cpu")


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
    write_text_atomic(project / "report.md", "\n".join(lines) + "\n")
    write_text_atomic(project / "report.json", json.dumps(results, indent=2))

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
    tmp = project / f".report.png.tmp{os.getpid()}"
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, project / "report.png")  # never half a plot under the final name
    return project / "report.md"

"""``yolo-kd demo``: the whole job offline, from a generated dataset to a report.

dataset (generated once per size, then reused) -> teacher (trained once, then reused only when its run finished with
the same settings) -> baseline and distilled students (same seed, epochs, settings) -> validation of all three -> ONNX
export of the distilled student (when the export extra is installed) -> ``report.md`` and ``report.png`` in the project
folder. A project folder holding an earlier demo's results is redone only with ``overwrite=True``.

Two regimes, each within 20 minutes on 2 AVX-512 CPU cores (several times that on cores without AVX-512: README).
``finetune`` (the default: the regime users are in, as they
fine-tune ``yolov8n.pt``): a generated ``source`` domain plays COCO's part; the student and a deeper teacher (YOLOv8m)
are pretrained on it, the teacher is fine-tuned on the target, and both students fine-tune the source-pretrained
student. ``scratch``: both students start from a random init (the distilled one from the teacher's weights where
``kd_init`` applies) and a YOLOv8s teacher trains on the target data. Every training stage before the students is
cached and reused only when its run finished with the same settings (``runs.train_or_reuse``).
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from ultralytics import YOLO
from ultralytics.utils import LOGGER, colorstr

from .config import KDConfigError, load_kd_config
from .dataset import CLASSES, SOURCE_CLASSES, make_dataset
from .files import write_text_atomic
from .inputs import check_writable
from .runs import content_key, dataset_manifest, train_or_reuse
from .teacher import load_teacher_model
from .trainer import KDDetectionTrainer

DEFAULTS: dict[str, Any] = {
    "epochs": 15,
    "imgsz": 128,
    "batch": 16,
    "n_train": 300,
    "n_val": 100,
    "teacher": None,
    "student": "yolov8n.yaml",
    "kd": "default",
    "project": "runs/demo",
    "data_root": "datasets",
    "device": None,
    "seed": 0,
    "overwrite": False,
    "regime": "finetune",
}
# Each regime's teacher and its own keys; a key of another regime is refused.
REGIMES: dict[str, dict[str, Any]] = {
    "scratch": {"teacher_model": "yolov8s.yaml", "teacher_epochs": 30},
    "finetune": {
        "teacher_model": "yolov8m.yaml",
        "teacher_epochs": 12,
        "source_epochs": 15,
        "teacher_source_epochs": 8,
        "source_n_train": 300,
    },
}
POSITIVE_INTS = (
    "epochs",
    "teacher_epochs",
    "imgsz",
    "n_train",
    "n_val",
    "source_epochs",
    "teacher_source_epochs",
    "source_n_train",
)
# What a demo writes in its project folder (besides val_* and the cached teacher_* and source_* runs).
DEMO_OUTPUTS = ("baseline", "distilled", "report.md", "report.png", "report.json")


def _stage(i: int, n: int, text: str) -> None:
    LOGGER.info(f"\n{colorstr('bold', 'blue', f'yolo-kd demo [{i}/{n}]')} {text}")


def slow_cpu_note(device: Any) -> str | None:
    """A line for users whose CPU runs torch without AVX-512, where the demo's defaults take several times longer.

    The README's demo times were measured on 2 AVX-512 cores; a 2-core AVX2 machine took 70 minutes against 11
    (docs/BENCHMARKS.md). Saying so at the start spares a user who expected 20 minutes from thinking it hangs.

    Args:
        device: The demo's ``device`` (None: Ultralytics' choice, a GPU when there is one).

    Returns:
        The line, or None on a GPU or an AVX-512 CPU (and on CPUs that were not measured).
    """
    on_cpu = str(device).lower() == "cpu" or (device in (None, "") and not torch.cuda.is_available())
    if not on_cpu or torch.backends.cpu.get_cpu_capability() != "AVX2":
        return None
    return (
        "this CPU runs torch's AVX2 kernels, without AVX-512: at its defaults the demo takes several times the time "
        "the README gives for AVX-512 cores (its times for AVX2 cores are beside them); its shorter command is quick"
    )


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


def demo_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """The demo's settings: its regime's defaults with ``overrides``, refused in one line when a key or value is bad.

    Args:
        overrides: The keys the user gave.

    Returns:
        Every setting of the regime.
    """
    regime = overrides.get("regime", DEFAULTS["regime"])
    if regime not in REGIMES:
        raise KDConfigError(f"regime={regime} is unknown; choose one of {sorted(REGIMES)}")
    defaults = {**DEFAULTS, **REGIMES[regime]}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        owners = {k: [r for r, keys in REGIMES.items() if k in keys] for k in unknown}
        hint = "".join(f" ({k}: regime={'/'.join(r)} only)" for k, r in owners.items() if r)
        raise KDConfigError(f"unknown demo key(s) {unknown} for regime={regime}{hint}; valid: {sorted(defaults)}")
    cfg = {**defaults, **overrides}
    least = {**dict.fromkeys(POSITIVE_INTS, 1), "imgsz": 32, "seed": 0}  # make_dataset draws nothing under 32 px
    for key in (k for k in least if k in cfg):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least[key]:
            raise KDConfigError(f"{key}={value}: give a whole number of at least {least[key]}")
    if isinstance(cfg["batch"], bool) or not isinstance(cfg["batch"], int) or cfg["batch"] < -1 or cfg["batch"] == 0:
        raise KDConfigError(f"batch={cfg['batch']}: give a whole number of at least 1 (or -1, Ultralytics' auto-batch)")
    if not isinstance(cfg["overwrite"], bool):
        raise KDConfigError(f"overwrite={cfg['overwrite']}: give True or False")
    return cfg


def run_demo(**overrides: Any) -> Path:
    """Run the demo; returns the path of ``report.md``.

    Args:
        **overrides: Keys of ``DEFAULTS`` and of the chosen regime's ``REGIMES`` entry; anything else, or a bad
            value, is refused in one line before anything is written.

    Returns:
        The report's path.
    """
    cfg = demo_settings(overrides)
    project = Path(cfg["project"]).resolve()
    _check_models(cfg)
    check_writable("project", project)
    check_writable("data_root", cfg["data_root"])
    _check_project(project, cfg["overwrite"])
    project.mkdir(parents=True, exist_ok=True)
    common = dict(
        imgsz=cfg["imgsz"], batch=cfg["batch"], device=cfg["device"], workers=0, plots=False, project=str(project)
    )
    finetune = cfg["regime"] == "finetune"
    stages = itertools.count(1)
    n, t0 = 7 if finetune else 6, time.time()
    if note := slow_cpu_note(cfg["device"]):
        LOGGER.warning(note)

    _stage(next(stages), n, "dataset" + (" (target, and the source domain for pretraining)" if finetune else ""))
    name = f"kdshapes_{cfg['n_train']}_{cfg['n_val']}_{cfg['imgsz']}"  # one dataset per size, each reused as made
    data = str(make_dataset(cfg["data_root"], name, cfg["n_train"], cfg["n_val"], cfg["imgsz"], seed=0))
    if finetune:
        start, teacher, stages_done = _pretrained_stages(cfg, data, common, stages, n)
        cfg = {**cfg, "student_start": start}
    else:
        _stage(next(stages), n, "teacher")
        teacher, how = demo_teacher(cfg, data, project, common)
        start, stages_done = cfg["student"], {"teacher": how}
    cfg = {**cfg, "student_init": _train_students(cfg, start, data, teacher, common, stages, n)}
    _stage(next(stages), n, "validation of teacher, baseline and distilled student")
    weights = {
        "teacher": teacher,
        "baseline": str(project / "baseline/weights/best.pt"),
        "distilled": str(project / "distilled/weights/best.pt"),
    }
    results = {
        k: _metrics(YOLO(w), data, cfg["imgsz"], cfg["batch"], cfg["device"], project, f"val_{k}")
        for k, w in weights.items()
    }
    _stage(next(stages), n, "export of the distilled student")
    exported = _export(weights["distilled"], cfg["imgsz"])
    cfg = {**cfg, "stages_done": stages_done}
    report = write_report(project, results, cfg, teacher, exported, (time.time() - t0) / 60)
    LOGGER.info(report.read_text())
    return report


def _pretrained_stages(
    cfg: dict[str, Any], data: str, common: dict[str, Any], stages: Iterator[int], n: int
) -> tuple[str, str, dict[str, str]]:
    """The finetune regime's stages before the students: the source-pretrained student and the teacher.

    Returns:
        The pretrained student's checkpoint, the teacher's, and how each was obtained (``trained``, ``reused``,
        ``given``).
    """
    name = f"kdsource_{cfg['source_n_train']}_{cfg['n_val']}_{cfg['imgsz']}"  # like the target: one per size
    source = str(make_dataset(cfg["data_root"], name, cfg["source_n_train"], cfg["n_val"], cfg["imgsz"], 0, "source"))
    _stage(next(stages), n, f"student {cfg['student']} pretrained on the source domain")
    student = cfg["student"]
    start, student_how = _cached_stage(student, Path(student).stem, source, cfg["source_epochs"], "source", cfg, common)
    _stage(next(stages), n, "teacher (pretrained on the source domain, then fine-tuned on the target)")
    teacher, teacher_how = _finetuned_teacher(cfg, source, data, common)
    return start, teacher, {"source-pretrained student": student_how, "teacher": teacher_how}


def _train_students(
    cfg: dict[str, Any], start: str, data: str, teacher: str, common: dict[str, Any], stages: Iterator[int], n: int
) -> str:
    """Train the baseline and the distilled student, both from ``start``, with the same seed, epochs and settings.

    Returns:
        How the distilled student started (its trainer's ``student_init``).
    """
    _stage(next(stages), n, "baseline student (no distillation)")
    runs = dict(data=data, epochs=cfg["epochs"], seed=cfg["seed"], exist_ok=True, **common)
    YOLO(start).train(name="baseline", **runs)
    _stage(next(stages), n, f"distilled student (kd={cfg['kd']})")
    distilled = YOLO(start)
    distilled.train(trainer=KDDetectionTrainer, teacher=teacher, kd=cfg["kd"], name="distilled", **runs)
    return distilled.trainer.student_init


def _cached_stage(
    model: str, stem: str, data: str, epochs: int, label: str, cfg: dict[str, Any], common: dict[str, Any]
) -> tuple[str, str]:
    """Train ``model`` on ``data`` once; a finished run with the same settings and parent bytes is reused.

    The folder ``<label>_<stem>_<key>`` carries a hash of what makes the run, the parent checkpoint's bytes included
    (a parent trained again gives its children another folder).

    Args:
        model: A model YAML or the parent checkpoint.
        stem: The architecture's name for the folder (a parent checkpoint's own stem is ``best``).
        data: The data YAML (generated by ``make_dataset``).
        epochs: Training epochs.
        label: ``source`` (pretraining on the source domain) or ``teacher`` (the teacher's fine-tuning).
        cfg: The demo settings.
        common: Ultralytics train arguments shared by every run of the demo.

    Returns:
        The run's ``best.pt`` and ``reused`` or ``trained``.
    """
    key = content_key(model, dataset_manifest(data), epochs, cfg["imgsz"], cfg["batch"], cfg["seed"])
    what = f"source-pretrained {stem}" if label == "source" else f"fine-tuned teacher {stem}"
    args = {**common, "data": data, "epochs": epochs, "seed": cfg["seed"]}
    return train_or_reuse(model, f"{label}_{stem}_{key}", what, **args)


def _finetuned_teacher(cfg: dict[str, Any], source: str, data: str, common: dict[str, Any]) -> tuple[str, str]:
    """The finetune regime's teacher: the one given, or ``teacher_model`` pretrained on the source, fine-tuned here.

    Returns:
        The teacher checkpoint and how it was obtained: ``given``, ``reused`` or ``trained`` (the fine-tuning's).
    """
    if cfg["teacher"] is not None:
        return str(cfg["teacher"]), "given"
    stem = Path(cfg["teacher_model"]).stem
    pretrained, _ = _cached_stage(
        cfg["teacher_model"], stem, source, cfg["teacher_source_epochs"], "source", cfg, common
    )
    return _cached_stage(pretrained, stem, data, cfg["teacher_epochs"], "teacher", cfg, common)


def _check_models(cfg: dict[str, Any]) -> None:
    """Refuse, before the first stage, a bad ``kd``, a teacher that is not a detection checkpoint or a missing model.

    Ultralytics would download a missing ``.pt`` by name; the demo trains from YAMLs or local files only.
    """
    from ultralytics.utils.torch_utils import select_device

    load_kd_config(cfg["kd"])
    if cfg["device"] not in (None, ""):
        try:
            select_device(cfg["device"], verbose=False)
        except Exception as e:  # Ultralytics' own message (no such CUDA device, ...), as one line
            raise KDConfigError(f"device={cfg['device']}: {' '.join(str(e).split())[:300]}") from None
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


def demo_teacher(cfg: dict[str, Any], data: str, project: Path, common: dict[str, Any]) -> tuple[str, str]:
    """The scratch regime's teacher: the one given, a finished cached one with these settings, or a newly trained one.

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
    name = f"teacher_{Path(cfg['teacher_model']).stem}_e{cfg['teacher_epochs']}_{cfg['imgsz']}"
    args = {**common, "project": str(project), "data": data, "epochs": cfg["teacher_epochs"], "seed": cfg["seed"]}
    return train_or_reuse(cfg["teacher_model"], name, "teacher", **args)


def _export(weights: str, imgsz: int) -> str | None:
    """ONNX export of the distilled student beside its weights, when the export extra is installed."""
    if importlib.util.find_spec("onnx") is None:
        LOGGER.info("ONNX export skipped: install the export extra (pip install -e .[export]) to enable it")
        return None
    src = Path(weights)
    # Ultralytics writes the ONNX file beside its checkpoint, in place: export a copy in a private folder and move the
    # whole file into place, so a kill never leaves half a best.onnx
    with tempfile.TemporaryDirectory(prefix=".yolo_kd_demo_export_", dir=src.parent) as work:
        copy = Path(work) / src.name
        shutil.copy2(src, copy)
        made = Path(YOLO(str(copy)).export(format="onnx", imgsz=imgsz, device="cpu"))
        final = src.with_suffix(".onnx")
        os.replace(made, final)
    return str(final)


def _read_csv(path: Path) -> dict[str, list[float]]:
    with open(path) as f:
        rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}


def _starts(cfg: dict[str, Any]) -> str:
    """How the students and the teacher started, in words, for the report."""
    if cfg["regime"] == "scratch":
        return f"The distilled student started from {cfg['student_init']}, the baseline from a random init."
    teacher = (
        "The teacher was given (teacher=)."
        if cfg["teacher"] is not None
        else f"The teacher, {cfg['teacher_model']}, was pretrained {cfg['teacher_source_epochs']} epochs on the source "
        f"domain, then fine-tuned {cfg['teacher_epochs']} epochs on kdshapes."
    )
    return (
        f"Both students (baseline and distilled) started from the source-pretrained weights `{cfg['student_start']}` "
        f"({cfg['student']} trained {cfg['source_epochs']} epochs on the generated source domain: "
        f"{cfg['source_n_train']} images, {len(SOURCE_CLASSES)} classes, {len(set(SOURCE_CLASSES) & set(CLASSES))} "
        f"of them shared with kdshapes). {teacher}"
    )


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
        f"Regime: {cfg['regime']}. "
        f"Data: generated kdshapes ({cfg['n_train']} train / {cfg['n_val']} val images, {cfg['imgsz']} px, "
        "10 classes). "
        f"Student {cfg['student']}, {cfg['epochs']} epochs, seed {cfg['seed']}; teacher `{teacher}`; kd={cfg['kd']}. "
        + _starts(cfg),
        "Stages: " + "; ".join(f"{k} {v}" for k, v in cfg.get("stages_done", {}).items()) + ".",
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
                    "train/kd_cross",
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

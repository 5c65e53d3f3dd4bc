"""Accuracy benchmark: baseline student vs Ultralytics' native distill_model= vs yolo-kd presets, same data and seeds.

Two regimes. ``scratch`` (the first round's): the student is built from its YAML (random weights) and the teacher is
trained on the target data. ``finetune`` (the users' regime): a ``source`` domain plays COCO's part; the student
(yolov8n) and a deeper teacher (yolov8m by default) are pretrained on it, the teacher is fine-tuned on the target,
and every method fine-tunes the pretrained student ``.pt`` on the target, as users fine-tune ``yolov8n.pt``.
Pretrained checkpoints are cached under the project folder by the content of what made them (model, data settings,
schedule, parent checkpoint's hash) and reused only if their run completed. Any run killed part-way (a deadline, a
session's end) is continued from its ``last.pt`` by the same command (``--no-resume``: train afresh), so schedules
longer than one sitting add up.

For each seed every method trains under identical settings; the script prints a table of mAP50 / mAP50-95 (mean and
spread over seeds), the baseline's rise over the last quarter of its epochs (is it at its plateau?), and appends both,
with the command, date and machine, to docs/BENCHMARKS.md.

    python scripts/bench_accuracy.py --epochs 20 --teacher-epochs 40 --imgsz 160 --seeds 0 1
    python scripts/bench_accuracy.py --regime finetune --teacher-model yolov8m.yaml --imgsz 128 --seeds 0 1 \\
        --methods baseline native default
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # a benchmark installs nothing behind the user's back

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plot_benchmarks import curve  # noqa: E402  (scripts/ is on the path: this script's own folder)
from ultralytics import YOLO  # noqa: E402

from yolo_kd import KDDetectionTrainer  # noqa: E402
from yolo_kd.dataset import make_dataset  # noqa: E402
from yolo_kd.runs import CHECKED, content_key, dataset_manifest, resumable, train_or_reuse  # noqa: E402

# "default_fp32": the default preset with the teacher kept in fp32 (kd_teacher_amp=False), to show that the
# reduced-precision teacher costs no accuracy.
# "*_lab": only --label-fraction of the training images keep their labels. base_lab: no KD; kd_lab: default preset on
# the labelled part; kd_lab_unl: default preset plus the rest of the images as unlabeled=, at the unlabeled_ratio that
# shows each once per epoch (1 - label fraction), so an epoch is as long as the fully labelled run's. Compare with
# "default" (all labels) for the share of the gap the unlabelled images recover.
# "*_init": the same, but the student starts from the teacher's selected weights (kd_init=teacher's mechanism) instead
# of a random init: baseline_init separates the init's share of the default's gain from the KD terms', native_init
# gives Ultralytics' feature the same start. In the finetune regime they start from the teacher *instead of* the
# pretrained student, as does "default_yaml": the default preset on a student built from its YAML, so kd_init=teacher
# applies (what a user gets with model=yolov8n.yaml rather than yolov8n.pt; in the scratch regime it is "default").
METHODS = (
    "baseline",
    "native",
    "default",
    "default_yaml",
    "baseline_init",
    "native_init",
    "full",
    "logit",
    "feature",
    "default_fp32",
    "base_lab",
    "kd_lab",
    "kd_lab_unl",
)
NO_KD = ("baseline", "native", "base_lab", "baseline_init", "native_init")  # no KD terms: --set does not apply
INIT_KEYS = ("kd_init_blocks", "kd_init_channels")  # ... except these, which the *_init methods' init takes
TEACHERLESS = ("baseline", "base_lab")


def teacher_folder(teacher: str | Path) -> str:
    """The folder of runs with a given teacher: ``with_`` its run's name (``<run>/weights/best.pt``), else its stem.

    Teacher files side by side outside a run (``snap/t33.pt``, ``snap/t61.pt``) get a folder each.
    """
    path = Path(teacher)
    return f"with_{path.parent.parent.name if path.parent.name == 'weights' else path.stem}"


def train(method: str, data: str, teacher: str, seed: int, args: argparse.Namespace, project: Path) -> dict:
    """Train one student and return its final metrics."""
    kd_set = parse_sets(args.set)
    name = method_name(method, args.set)
    if args.epochs != 20:  # other schedules get their own folder, so runs of one schedule never overwrite another's
        project = project / f"e{args.epochs}"
    if args.teacher is not None:  # so do runs with another teacher
        project = project / teacher_folder(teacher)
    common = dict(
        data=data,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        seed=seed,
        deterministic=True,
        workers=args.workers,
        project=str(project),
        name=f"{name}_s{seed}",
        exist_ok=True,
        plots=False,
        device=args.device,
        verbose=False,
    )
    source = args.student if method == "default_yaml" else args.student_pt or args.student
    if method.endswith(("_lab", "_lab_unl")):
        data, unlabeled = split_dataset(data, args.label_fraction)
        common["data"] = data
    # a run killed part-way (a deadline, a session's end) with these settings continues from its last.pt; the
    # *_init methods start from a checkpoint they write first, so they always train afresh
    want = {"model": source, **{k: common[k] for k in CHECKED}}
    last = None if method.endswith("_init") or not args.resume else resumable(project / common["name"], want)
    model = YOLO(str(last) if last is not None else source)
    t0 = time.time()
    if last is not None:
        print(f"resuming {name} seed {seed} from {last}: its run stopped early with these settings", flush=True)
        model.train(resume=True, **({} if method in NO_KD else {"trainer": KDDetectionTrainer}))
    elif method.endswith(("_lab", "_lab_unl")):
        if method == "base_lab":
            model.train(**common)
        elif method == "kd_lab":
            model.train(trainer=KDDetectionTrainer, teacher=teacher, kd="default", **kd_set, **common)
        else:
            # every unlabelled image once per epoch: epochs as long as the fully labelled run's
            ratio = {"unlabeled_ratio": round(1 - args.label_fraction, 6), **kd_set}
            model.train(
                trainer=KDDetectionTrainer, teacher=teacher, kd="default", unlabeled=unlabeled, **ratio, **common
            )
    elif method == "baseline":
        model.train(**common)
    elif method == "native":
        model.train(distill_model=teacher, **common)
    elif method in ("baseline_init", "native_init"):
        init = {k: kd_set[k] for k in INIT_KEYS if k in kd_set}
        model = YOLO(teacher_selected_student(args.student, teacher, data, project / f"{name}_s{seed}", **init))
        model.train(**common, **({"distill_model": teacher} if method == "native_init" else {}))
    elif method == "default_yaml":
        model.train(trainer=KDDetectionTrainer, teacher=teacher, kd="default", **kd_set, **common)
    elif method == "default_fp32":
        model.train(
            trainer=KDDetectionTrainer, teacher=teacher, kd="default", **{**kd_set, "kd_teacher_amp": False}, **common
        )
    else:
        model.train(trainer=KDDetectionTrainer, teacher=teacher, kd=method, **kd_set, **common)
    m = model.trainer.metrics
    return {
        "method": name,
        "seed": seed,
        "mAP50": float(m["metrics/mAP50(B)"]),
        "mAP50-95": float(m["metrics/mAP50-95(B)"]),
        "minutes": (time.time() - t0) / 60,  # this process's share only, when resumed
        "resumed": last is not None,
        "setting": setting(args, teacher),
        "run": str(model.trainer.save_dir),
    }


def teacher_selected_student(student: str, teacher: str, data: str, folder: Path, **init: Any) -> str:
    """A checkpoint of ``student`` initialised as ``kd_init=teacher`` does, for trainers that take no ``kd_init``.

    ``init`` takes the init keys (``INIT_KEYS``), validated and defaulted by the KD config, as a KD run would.
    """
    import torch
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    from yolo_kd.classes import class_pairs, name_list
    from yolo_kd.config import KDConfigError, load_kd_config
    from yolo_kd.inherit import inherit_weights

    names = name_list(yaml.safe_load(Path(data).read_text())["names"])
    t, _ = load_checkpoint(teacher)
    model = DetectionModel(student, nc=len(names), verbose=False)
    pairs = class_pairs(names, name_list(t.names))
    try:
        cfg = load_kd_config(**init)
    except KDConfigError as e:
        raise SystemExit(str(e)) from None
    reason = inherit_weights(model, t, pairs, blocks=cfg.kd_init_blocks, channels=cfg.kd_init_channels)
    if reason is not None:
        raise SystemExit(f"cannot start {student} from {teacher}: {reason}")
    model.names = dict(enumerate(names))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "teacher_selected_init.pt"
    torch.save({"model": model}, path)
    return str(path)


def warm_label_caches(data: str) -> None:
    """Write the dataset's Ultralytics label caches now, so runs started side by side (bench_lanes.py) only read them.

    Ultralytics writes a missing cache with an unguarded remove-then-write; two processes doing so at once can fail.
    """
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    d = check_det_dataset(data)
    for split in ("train", "val"):
        YOLODataset(img_path=d[split], data=d, augment=False)


def parse_sets(sets: list[str]) -> dict:
    """``["kd_cls=2", "unlabeled_ratio=0.75"]`` -> ``{"kd_cls": 2, "unlabeled_ratio": 0.75}`` (values read as YAML)."""
    out = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def method_name(method: str, sets: list[str]) -> str:
    """A variant's name in the results: the method plus its overrides, e.g. ``kd_lab_unl[unlabeled_ratio=0.75]``."""
    if method.endswith("_init"):
        sets = [s for s in sets if s.partition("=")[0] in INIT_KEYS]
    if not sets or (method in NO_KD and not method.endswith("_init")):
        return method
    return f"{method}[{','.join(sets)}]"


def split_dataset(data: str, fraction: float) -> tuple[str, str]:
    """Keep labels for the first ``fraction`` of the training images; the rest become a folder of bare images."""
    import shutil

    root = Path(data).parent
    cfg = yaml.safe_load(Path(data).read_text())
    src = root / cfg["train"]
    images = sorted(src.glob("*.png"))
    n = round(len(images) * fraction)
    name = f"{Path(data).stem}_lab{round(100 * fraction)}"
    # built in a private folder and moved into place whole: bench_lanes.py may run two *_lab methods at once
    tmp = root / f".{name}.partial-{os.getpid()}"
    if not (root / name).is_dir():
        (tmp / name / "labels" / "train").mkdir(parents=True)
        (tmp / name / "images" / "train").mkdir(parents=True)
        (tmp / f"{name}_unlabeled").mkdir(parents=True)
        for im in images[:n]:
            shutil.copy(im, tmp / name / "images" / "train" / im.name)
            label = Path(str(im.parent).replace("images", "labels")) / f"{im.stem}.txt"
            shutil.copy(label, tmp / name / "labels" / "train" / label.name)
        for im in images[n:]:
            shutil.copy(im, tmp / f"{name}_unlabeled" / im.name)
        for part in (f"{name}_unlabeled", name):  # the labelled folder last: its presence means both are whole
            with contextlib.suppress(OSError):  # another process moved the same split in first: it is kept
                os.replace(tmp / part, root / part)
        shutil.rmtree(tmp, ignore_errors=True)
    split = root / f"{name}.yaml"
    if not split.is_file():
        val = str((root / cfg["val"]).resolve())
        text = yaml.safe_dump({"train": f"{name}/images/train", "val": val, "names": cfg["names"]})
        (tmp_yaml := root / f".{name}.yaml.partial-{os.getpid()}").write_text(text)
        os.replace(tmp_yaml, split)
    return str(split), str(root / f"{name}_unlabeled")


def setting(args: argparse.Namespace, teacher: str) -> str:
    """Results are comparable only within one setting; the table pools runs of the same one across invocations.

    A method is pooled by its name, so a change of what a name means (a preset's default, e.g. ``kd_init_channels``
    on 2026-12-01) is measured in a new ``--project``, never beside the records of the old meaning.
    """
    return f"{args.student_pt or args.student}|{teacher}|e{args.epochs}|{args.imgsz}|b{args.batch}|n{args.n_train}"


def cached_training(model: str, data: str, epochs: int, label: str, args: argparse.Namespace, project: Path) -> str:
    """Train ``model`` on ``data`` once (seed 0) and return its ``best.pt``; a completed earlier run is reused.

    The folder's name carries a hash of the settings and of the parent checkpoint's bytes (``content_key``), so a
    parent trained again gives its children another folder. A stage killed part-way (a session's end) is continued
    from its ``last.pt`` unless ``--no-resume``.
    """
    key = content_key(model, dataset_manifest(data), epochs, args.imgsz, args.batch)
    best, _ = train_or_reuse(
        model,
        f"{label}_{Path(model).stem}_{key}",
        label,
        resume=args.resume,
        project=str(project),
        data=data,
        epochs=epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        seed=0,
        workers=args.workers,
        plots=False,
        device=args.device,
    )
    return best


def last_quarter_rise(run: Path) -> str | None:
    """A run's mAP50-95 rise over the last quarter of its epochs, from its results.csv (None without one).

    Two figures: between single epochs (the value a quarter of the epochs before the end, and the last), and between
    the means of a twentieth of the epochs ending at those two points. One epoch's validation differs from the next
    by 0.2-0.25 points on average at 600 epochs (docs/BENCHMARKS.md), and the criterion is 0.5 points between two
    single epochs, so the means say more on long schedules.
    """
    if not (run / "results.csv").is_file():
        return None
    values = curve(run)
    quarter = len(values) // 4
    start = values[-quarter - 1]
    text = f"{100 * (values[-1] - start):+.2f} points ({start:.4f} -> {values[-1]:.4f})"
    window = len(values) // 20
    if window > 1:
        before, last = values[-quarter - window : -quarter], values[-window:]
        rise = sum(last) / window - sum(before) / window
        text += f", {100 * rise:+.2f} between {window}-epoch means"
    return text


def plateau(results: list[dict]) -> str:
    """Each run's mAP50-95 rise over the last quarter of its epochs: the baseline's says whether it is at its plateau,
    the others' whether a method flattens earlier or later than the baseline."""
    rises: dict[str, list[str]] = {}
    for r in sorted((r for r in results if r.get("run")), key=lambda r: (r["method"] != "baseline", r["seed"])):
        rise = last_quarter_rise(Path(r["run"]))
        if rise is not None:
            rises.setdefault(r["method"], []).append(f"seed {r['seed']}: {rise}")
    lines = []
    if "baseline" in rises:
        lines.append("Baseline over the last quarter of its epochs (plateau: under +0.5 points): ")
        lines[-1] += "; ".join(rises.pop("baseline")) + "."
    lines += [f"{method} over the last quarter of its epochs: " + "; ".join(r) + "." for method, r in rises.items()]
    return "  \n".join(lines)


def pool_key(result: dict) -> str:
    """The setting a result is pooled under: runs without a teacher pool across teachers.

    A baseline never sees the teacher, so its runs under one teacher stand for every other (same student, schedule,
    data and seed); a new teacher then needs only its KD runs.
    """
    student, _teacher, rest = result["setting"].split("|", 2)
    return f"{student}|-|{rest}" if result["method"] in TEACHERLESS else result["setting"]


def table(results: list[dict], teacher_map: tuple[float, float]) -> str:
    """Markdown table with mean and spread (max - min) over seeds, and gain over the baseline."""
    rows = [
        "| method | mAP50 | mAP50-95 | gain vs baseline (mAP50-95) | share of teacher gap closed | seeds |",
        "|---|---|---|---|---|---|",
    ]
    # presets in their fixed order, then --set variants in the order they were run
    names = list(METHODS) + [r["method"] for r in results if r["method"] not in METHODS]
    by = {m: [r for r in results if r["method"] == m] for m in dict.fromkeys(names)}
    base = statistics.mean(r["mAP50-95"] for r in by["baseline"]) if by["baseline"] else None
    for method, rs in by.items():
        if not rs:
            continue
        m50 = [r["mAP50"] for r in rs]
        m95 = [r["mAP50-95"] for r in rs]
        mean95 = statistics.mean(m95)
        gain = f"{mean95 - base:+.4f}" if base is not None else "-"
        gap = f"{(mean95 - base) / (teacher_map[1] - base):.0%}" if base is not None and teacher_map[1] > base else "-"
        rows.append(
            f"| {method} | {statistics.mean(m50):.4f} ± {(max(m50) - min(m50)) / 2:.4f} | "
            f"{mean95:.4f} ± {(max(m95) - min(m95)) / 2:.4f} | {gain} | {gap} | {len(rs)} |"
        )
    rows.append(f"| teacher | {teacher_map[0]:.4f} | {teacher_map[1]:.4f} | | | |")
    for unl_name in [m for m in by if m.startswith("kd_lab_unl") and by[m]]:
        if not (by["kd_lab"] and by["default"]):
            break
        lab, unl, full = (statistics.mean(r["mAP50-95"] for r in by[k]) for k in ("kd_lab", unl_name, "default"))
        share = f"{(unl - lab) / (full - lab):.0%}" if full > lab else "n/a (no gap)"
        rows.append(
            f"\nUnlabelled images: kd_lab {lab:.4f} -> {unl_name} {unl:.4f}; all labels (default) {full:.4f}: "
            f"they recover {share} of the gap."
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--teacher-epochs", type=int, default=40)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--regime", choices=("scratch", "finetune"), default="scratch")
    p.add_argument("--student", default="yolov8n.yaml")
    p.add_argument("--teacher-model", default=None, help="default: yolov8s.yaml (scratch), yolov8m.yaml (finetune)")
    p.add_argument("--source-epochs", type=int, default=30, help="finetune: pretraining epochs on the source domain")
    p.add_argument("--teacher-source-epochs", type=int, default=None, help="finetune: the teacher's (default: same)")
    p.add_argument("--source-n-train", type=int, default=600, help="finetune: source-domain training images")
    p.add_argument("--teacher", default=None, help="existing teacher checkpoint (skips teacher training)")
    p.add_argument(
        "--pretrained-student",
        default=None,
        help="finetune: an existing pretrained student .pt (skips its source-domain pretraining)",
    )
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--label-fraction", type=float, default=0.25, help="labelled share for the *_lab methods")
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="yolo-kd keys for the KD methods (method log variants), e.g. --set kd_cls=2 kd_weight_power=0.5",
    )
    p.add_argument(
        "--table-only", action="store_true", help="train nothing: tabulate the runs already recorded for this setting"
    )
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="prepare the data and the cached stages (teacher, pretrained student), then stop (bench_lanes.py)",
    )
    p.add_argument(
        "--resume",
        "--resume-stages",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue a killed run (a method's, the teacher's, a pretraining stage) with the same settings from its "
        "last.pt; one bench process per run folder (bench_lanes.py gives each run its own)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--project", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--data-root", default=str(ROOT / "datasets"), help="where the generated datasets go")
    p.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    args = p.parse_args()
    args.teacher_model = args.teacher_model or ("yolov8m.yaml" if args.regime == "finetune" else "yolov8s.yaml")
    args.student_pt = args.pretrained_student
    if args.student_pt is not None and args.regime != "finetune":
        raise SystemExit("--pretrained-student: only the finetune regime starts from a pretrained student")

    project = Path(args.project).resolve()  # a relative project would land under Ultralytics' runs_dir/detect
    # the first round's set keeps its committed name; other sizes get their own folder (make_dataset never replaces)
    sized = (args.n_train, args.n_val, args.imgsz) != (400, 100, 160)
    name = f"kdshapes_{args.n_train}_{args.n_val}_{args.imgsz}" if sized else "kdshapes"
    data = str(make_dataset(args.data_root, name, args.n_train, args.n_val, args.imgsz, seed=0))
    warm_label_caches(data)
    teacher = args.teacher
    if args.regime == "scratch" and "default_yaml" in args.methods:
        raise SystemExit("default_yaml: in the scratch regime the student is always built from its YAML: use default")
    if args.regime == "finetune":
        project = project / "finetune"
        src_name = f"kdsource_{args.source_n_train}_{args.imgsz}"
        if args.student_pt is None or teacher is None:  # a stage to train on the source domain
            source = str(
                make_dataset(args.data_root, src_name, args.source_n_train, args.n_val, args.imgsz, 0, "source")
            )
        if args.student_pt is None:
            args.student_pt = cached_training(args.student, source, args.source_epochs, "pretrain", args, project)
        if teacher is None:
            t_epochs = args.teacher_source_epochs or args.source_epochs
            t_source = cached_training(args.teacher_model, source, t_epochs, "pretrain", args, project)
            teacher = cached_training(t_source, data, args.teacher_epochs, "teacher", args, project)
    elif teacher is None:
        teacher = cached_training(args.teacher_model, data, args.teacher_epochs, "teacher", args, project)
    if args.prepare_only:
        print(f"prepared: data {data}, teacher {teacher}, student {args.student_pt or args.student}")
        return
    tm = YOLO(teacher).val(
        data=data,
        imgsz=args.imgsz,
        batch=args.batch,
        plots=False,
        device=args.device,
        project=str(project),
        name="teacher_val",
        exist_ok=True,
        verbose=False,
    )
    teacher_map = (float(tm.box.map50), float(tm.box.map))

    results_file = project / "accuracy_results.jsonl"
    for seed in [] if args.table_only else args.seeds:
        for method in args.methods:
            r = train(method, data, teacher, seed, args, project)
            print(json.dumps(r), flush=True)
            append_record(results_file, r)

    # every run of this setting so far, this invocation's and earlier ones' (latest run per method and seed)
    latest = {}
    if not results_file.is_file():
        raise SystemExit(f"{results_file}: no runs recorded yet")
    here = setting(args, teacher)
    for r in read_records(results_file):
        if "setting" in r and pool_key(r) == pool_key({"method": r["method"], "setting": here}):
            latest[(r["method"], r["seed"])] = r
    md = table(list(latest.values()), teacher_map)
    curve = plateau(list(latest.values()))
    if curve:
        md += "\n\n" + curve
    print(md)
    cmd = "python " + " ".join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:])
    cpu = platform.processor() or platform.machine()
    header = (
        f"\n## Accuracy: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
        f"Command: `{cmd}`  \nMachine: {os.cpu_count()} CPU cores ({cpu}), device={args.device}, "
        f"torch {__import__('torch').__version__}, ultralytics {__import__('ultralytics').__version__}  \n"
        f"Data: generated `kdshapes` ({args.n_train} train / {args.n_val} val, {args.imgsz} px, 10 classes); "
        f"regime {args.regime}; student {regime_student(args)}, teacher {teacher} ; {args.epochs} epochs, "
        f"batch {args.batch}, "
        f"{'every recorded seed (see the seeds column)' if args.table_only else f'seeds {args.seeds}'}. "
        f"'±' is half the spread (max - min) over seeds.\n\n"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(header + md + "\n")


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line in a single write to an O_APPEND file: lanes running side by side never interleave.

    After a half line (a run killed while writing), the record starts on a line of its own.
    """
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, ("\n" if torn else "").encode() + (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict]:
    """The JSON lines of ``path``; a line a killed run left half-written is skipped with a warning, not fatal."""
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"WARNING: {path}:{n}: not a whole record (a run killed while writing it?); skipped", file=sys.stderr)
    return records


def regime_student(args: argparse.Namespace) -> str:
    """How the student starts, for the table's header."""
    if args.student_pt is None:
        return f"{args.student} (random init unless kd_init applies)"
    if args.pretrained_student is not None:
        return f"{args.student_pt} (given with --pretrained-student)"
    return (
        f"{args.student_pt} ({args.student} pretrained {args.source_epochs} epochs on the generated source domain, "
        f"{args.source_n_train} images; the teacher {args.teacher_model} "
        f"{args.teacher_source_epochs or args.source_epochs} epochs there, then fine-tuned "
        f"{args.teacher_epochs} epochs on the target)"
    )


if __name__ == "__main__":
    main()

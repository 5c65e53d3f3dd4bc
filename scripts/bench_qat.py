"""INT8 students on the accuracy benchmark: post-training quantization (PTQ) and QAT, without and with distillation.

It starts from the fp32 students ``scripts/bench_accuracy.py`` trained (its ``baseline`` and ``default`` runs, same
data, teacher and seeds) and, per seed, makes the INT8 models of ``ROWS``, each exported and verified by
``yolo-kd export`` (mAP50-95 of the INT8 file through Ultralytics' backend, next to the same weights in fp32; size;
CPU latency):

- ``baseline PTQ`` and ``distilled PTQ``: the fp32 student exported with ``quantize=8``, calibrated where
  Ultralytics calibrates by default, the validation split (LiteRT, the edge format, and ONNX, to compare with the QAT
  rows in one runtime); LiteRT as ``yolo-kd export`` makes it (the box decode at the graph's end in float,
  ``int8_box_tail=float``) and, in the rows marked ``int8 box tail``, as Ultralytics makes it (every activation int8);
- ``baseline QAT``: the fp32 baseline fine-tuned ``--finetune`` epochs with Ultralytics' ``quantize=8``;
- ``distilled QAT (KD)``: the distilled fp32 student fine-tuned the same way with the teacher beside it;
- ``... PTQ w8a16``: LiteRT's static scheme with int8 weights and int16 activations, for comparison.

A QAT checkpoint exports its learnt ranges as Q/DQ ONNX only (LiteRT would need a fresh calibration, which throws
them away), so the QAT rows are INT8 ONNX through ONNX Runtime. Every finished model is recorded in
``<work>/bench_qat.jsonl`` and skipped when the command runs again, so a killed run continues where it stopped.

    python scripts/bench_accuracy.py --seeds 0 1 --methods baseline default      # the fp32 students first
    python scripts/bench_qat.py --seeds 0 1 --finetune 3

Needs ``.[qat,export]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # a benchmark installs nothing behind the user's back
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_accuracy import append_record, read_records  # noqa: E402  (this folder is first on sys.path)
from ultralytics import YOLO  # noqa: E402

from yolo_kd import KDDetectionTrainer  # noqa: E402
from yolo_kd.export import export_and_verify  # noqa: E402

# (row, fp32 student it starts from, how it is made INT8, export format, quantize=, int8_box_tail= for LiteRT INT8)
Row = tuple[str, str, str, str, int | str, str | None]
ROWS: tuple[Row, ...] = (
    ("baseline PTQ", "baseline", "ptq", "litert", 8, "float"),
    ("distilled PTQ", "default", "ptq", "litert", 8, "float"),
    ("baseline PTQ", "baseline", "ptq", "onnx", 8, None),
    ("distilled PTQ", "default", "ptq", "onnx", 8, None),
    ("baseline QAT", "baseline", "qat", "onnx", 8, None),
    ("distilled QAT (KD)", "default", "qat", "onnx", 8, None),
    # LiteRT's static scheme with int16 activations (int8 weights): where full INT8 activations lose too much
    ("baseline PTQ w8a16", "baseline", "ptq", "litert", "w8a16", None),
    ("distilled PTQ w8a16", "default", "ptq", "litert", "w8a16", None),
    # Ultralytics' own full-INT8 LiteRT graph (boxes and scores concatenated in int8), and the int16 tail
    ("baseline PTQ, int8 box tail", "baseline", "ptq", "litert", 8, "int8"),
    ("distilled PTQ, int8 box tail", "default", "ptq", "litert", 8, "int8"),
    ("distilled PTQ, int16 box tail", "default", "ptq", "litert", 8, "int16"),
)


def fp32_students(project: Path, epochs: int, seeds: list[int]) -> dict[tuple[str, int], dict[str, Any]]:
    """The accuracy bench's latest finished ``baseline``/``default`` run per seed, with its teacher and data."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    records = project / "accuracy_results.jsonl"
    for r in read_records(records) if records.is_file() else []:
        parts = r.get("setting", "").split("|")
        if r["method"] in ("baseline", "default") and r["seed"] in seeds and f"e{epochs}" in parts:
            best = Path(r["run"]) / "weights" / "best.pt"
            args = YOLO(str(best)).ckpt["train_args"] if best.is_file() else {}
            found[(r["method"], r["seed"])] = {"pt": best, "teacher": parts[1], "data": args.get("data"), **r}
    missing = [f"{m} seed {s}" for s in seeds for m in ("baseline", "default") if (m, s) not in found]
    if missing:
        raise SystemExit(
            f"{records}: no finished fp32 run for {', '.join(missing)}; run first: python scripts/bench_accuracy.py "
            f"--epochs {epochs} --seeds {' '.join(map(str, seeds))} --methods baseline default"
        )
    return found


def qat_student(fp32: dict[str, Any], kd: bool, seed: int, a: argparse.Namespace) -> Path:
    """Fine-tune an fp32 student ``a.finetune`` epochs with ``quantize=8`` (and the teacher when ``kd``)."""
    name = f"{'kd' if kd else 'baseline'}_qat_s{seed}"
    best = a.work / name / "weights" / "best.pt"
    if best.is_file() and (a.work / name / "finished").is_file():
        return best
    extra = dict(trainer=KDDetectionTrainer, teacher=fp32["teacher"]) if kd else {}
    YOLO(str(fp32["pt"])).train(
        data=fp32["data"],
        epochs=a.finetune,
        imgsz=a.imgsz,
        batch=a.batch,
        seed=seed,
        deterministic=True,
        workers=0,
        plots=False,
        quantize=8,
        project=str(a.work),
        name=name,
        exist_ok=True,
        device="cpu",
        **extra,
    )
    (a.work / name / "finished").write_text("")
    return best


def measure(row: Row, seed: int, fp32: dict[str, Any], a: argparse.Namespace) -> dict:
    """Make and verify one INT8 model; its record."""
    label, method, how, fmt, quantize, box_tail = row
    if how == "qat":
        pt = qat_student(fp32, method == "default", seed, a)
    else:  # exported from a copy: the accuracy bench's run folders are left as they are
        pt = a.work / f"{method}_fp32_s{seed}" / "best.pt"
        pt.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(fp32["pt"], pt)
    r = export_and_verify(
        pt, format=fmt, imgsz=a.imgsz, quantize=quantize, data=fp32["data"], overwrite=True, int8_box_tail=box_tail
    )
    return {
        "row": label,
        "format": fmt,
        "seed": seed,
        "int8": r["mAP50-95"]["exported"],
        "fp32": r["mAP50-95"]["pytorch"],
        "fp32_student": fp32["mAP50-95"],
        "size_mb": r["size_mb"]["exported"],
        "latency_ms": r["latency_ms_median"]["exported"],
        "int8_ranges": r["int8_ranges"],
        "int8_box_tail": r["int8_box_tail"],
        "checkpoint": str(pt),
    }


def mean_spread(values: list[float]) -> str:
    return f"{sum(values) / len(values):.4f} ± {(max(values) - min(values)) / 2:.4f}"


def report(records: list[dict], seeds: list[int]) -> str:
    """The markdown table and the issue's two targets, from the records of ``seeds``."""
    rows: dict[tuple[str, str], dict[int, dict]] = {}
    for r in records:
        if r["seed"] in seeds:
            rows.setdefault((r["row"], r["format"]), {})[r["seed"]] = r
    out = [
        "| INT8 model | format | INT8 mAP50-95 | same weights fp32 | drop (points) | MB | CPU ms | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (label, fmt), per_seed in rows.items():
        rs = list(per_seed.values())
        drop = [100 * (r["fp32"] - r["int8"]) for r in rs]
        out.append(
            f"| {label} | {fmt} | {mean_spread([r['int8'] for r in rs])} | {mean_spread([r['fp32'] for r in rs])} | "
            f"{sum(drop) / len(drop):+.2f} | {rs[0]['size_mb']:.1f} | {sum(r['latency_ms'] for r in rs) / len(rs):.1f} "
            f"| {len(rs)} |"
        )

    def per_seed(label: str, fmt: str, key: str = "int8") -> dict[int, float]:
        return {s: r[key] for s, r in rows.get((label, fmt), {}).items()}

    kd_lite, base_lite = per_seed("distilled PTQ", "litert"), per_seed("baseline PTQ", "litert")
    kd_fp32, base_fp32 = per_seed("distilled PTQ", "litert", "fp32"), per_seed("baseline PTQ", "litert", "fp32")
    both = sorted(set(kd_lite) & set(base_lite))
    out.append("")
    for s in both:
        gain = kd_fp32[s] - base_fp32[s]
        out.append(
            f"Seed {s}: distilled INT8 LiteRT (float box tail) {kd_lite[s]:.4f}, "
            f"{100 * (kd_fp32[s] - kd_lite[s]):.2f} points below "
            f"its fp32 weights (target: within 1.0); ahead of the baseline's PTQ INT8 LiteRT by "
            f"{100 * (kd_lite[s] - base_lite[s]):+.2f} points against an fp32 distillation gain of {100 * gain:+.2f} "
            f"(target: at least that)."
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accuracy-project", default=str(ROOT / "runs" / "bench"), help="bench_accuracy.py's --project")
    p.add_argument("--epochs", type=int, default=20, help="the fp32 students' schedule (bench_accuracy --epochs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--finetune", type=int, default=3, help="QAT fine-tuning epochs")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rows", nargs="+", type=int, default=list(range(len(ROWS))), help="which rows (indices of ROWS)")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_qat"))
    a = p.parse_args()
    a.work = Path(a.work).resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    students = fp32_students(Path(a.accuracy_project), a.epochs, a.seeds)
    records_file = a.work / "bench_qat.jsonl"
    records = read_records(records_file) if records_file.is_file() else []
    # keyed with the box tail: a LiteRT INT8 record made before int8_box_tail existed had Ultralytics' int8 output
    done = {(r["row"], r["format"], r["seed"], r.get("int8_box_tail")) for r in records}
    for seed in a.seeds:
        for i in a.rows:
            row = ROWS[i]
            if (row[0], row[3], seed, row[5]) in done:
                continue
            r = measure(row, seed, students[(row[1], seed)], a)
            print(json.dumps(r), flush=True)
            records.append(r)
            append_record(records_file, r)
    print(report(records, a.seeds))


if __name__ == "__main__":
    main()

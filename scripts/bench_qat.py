"""Which INT8 student is better: distil in fp32 then calibrate (PTQ), distil with QAT, or distil then QAT fine-tune?

On one generated dataset (or yours) with one teacher, three INT8 ONNX students are exported and verified by
``yolo-kd export`` (mAP50-95 through ONNX Runtime next to the fp32 weights, size, CPU latency):

(a) ``ptq``: a KD student trained in fp32, exported with ``quantize=8`` (calibrated on the training data);
(b) ``qat``: a KD student trained with ``quantize=8`` from the start, exported with its learnt ranges;
(c) ``kd+qat``: student (a) fine-tuned for ``--finetune`` epochs with ``quantize=8`` and the teacher beside it.

    python scripts/bench_qat.py --epochs 30 --finetune 5 --imgsz 160
    python scripts/bench_qat.py --teacher teacher.pt --data data.yaml --epochs 100 --finetune 10 --imgsz 640

Writes ``<work>/bench_qat.json`` and prints a markdown table. Needs ``.[qat,export]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # a benchmark installs nothing behind the user's back
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ultralytics import YOLO  # noqa: E402

from yolo_kd import KDDetectionTrainer  # noqa: E402
from yolo_kd.export import export_and_verify  # noqa: E402


def _train(model: str, name: str, a: argparse.Namespace, **kwargs: Any) -> str:
    """Train one model into ``<work>/<name>``; return its best.pt."""
    common = dict(data=a.data, imgsz=a.imgsz, batch=a.batch, workers=0, plots=False, seed=a.seed, deterministic=True)
    YOLO(model).train(project=a.work, name=name, exist_ok=True, **common, **kwargs)
    return str(Path(a.work) / name / "weights" / "best.pt")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=None, help="teacher checkpoint (default: train a yolov8s on the data)")
    p.add_argument("--data", default=None, help="data YAML (default: a generated dataset)")
    p.add_argument("--student", default="yolov8n.yaml")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--finetune", type=int, default=5)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/bench_qat")
    a = p.parse_args()
    a.work = str(Path(a.work).resolve())
    if a.data is None:
        from yolo_kd.dataset import make_dataset

        a.data = str(make_dataset(Path(a.work) / "data", "qat", n_train=256, n_val=64, imgsz=a.imgsz, seed=a.seed))
    teacher = a.teacher or _train("yolov8s.yaml", "teacher", a, epochs=a.epochs)
    kd = dict(trainer=KDDetectionTrainer, teacher=teacher)
    fp32 = _train(a.student, "kd_fp32", a, epochs=a.epochs, **kd)
    students = {
        "ptq": fp32,
        "qat": _train(a.student, "kd_qat", a, epochs=a.epochs, quantize=8, **kd),
        "kd+qat": _train(fp32, "kd_then_qat", a, epochs=a.finetune, quantize=8, **kd),
    }
    rows = {}
    for name, pt in students.items():
        r = export_and_verify(pt, format="onnx", imgsz=a.imgsz, quantize=8, data=a.data, overwrite=True)
        rows[name] = {
            "int8_mAP50-95": r["mAP50-95"]["exported"],
            "fp32_mAP50-95": r["mAP50-95"]["pytorch"],
            "size_mb": r["size_mb"]["exported"],
            "latency_ms": r["latency_ms_median"]["exported"],
            "int8_ranges": r["int8_ranges"],
            "checkpoint": pt,
        }
    (Path(a.work) / "bench_qat.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))
    print("| INT8 student | INT8 mAP50-95 | its fp32 weights | ONNX MB | CPU ms |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['int8_mAP50-95']:.4f} | {r['fp32_mAP50-95']:.4f} | {r['size_mb']:.1f} | "
            f"{r['latency_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()

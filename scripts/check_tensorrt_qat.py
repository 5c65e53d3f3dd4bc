"""GPU check: distil into an INT8 QAT student, export it to an INT8 TensorRT engine (CUDA, `tensorrt`, `.[qat]`).

The engine must carry the ranges learnt in QAT (explicit Q/DQ, no calibration), and the report gives its mAP50-95
next to the same weights in fp32, its size and latency. Self-contained (a tiny dataset, a 1-epoch teacher and a
1-epoch QAT + KD student), or on your own files:

    python scripts/check_tensorrt_qat.py
    python scripts/check_tensorrt_qat.py --model runs/detect/qat/weights/best.pt --data data.yaml --imgsz 640
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # a check installs nothing behind the user's back
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from yolo_kd.export import export_and_verify  # noqa: E402


def _tiny_qat_student(work: Path, imgsz: int) -> tuple[str, str]:
    """A tiny dataset, a 1-epoch teacher, and a 1-epoch QAT + KD student distilled from it on GPU 0."""
    from ultralytics import YOLO

    from yolo_kd import KDDetectionTrainer
    from yolo_kd.dataset import make_dataset

    data = str(make_dataset(work / "data", "trt_qat", n_train=64, n_val=32, imgsz=imgsz))
    common = dict(data=data, epochs=1, imgsz=imgsz, batch=16, device=0, project=str(work), exist_ok=True, plots=False)
    YOLO("yolov8s.yaml").train(name="teacher", **common)
    teacher = str(work / "teacher" / "weights" / "best.pt")
    YOLO("yolov8n.yaml").train(trainer=KDDetectionTrainer, teacher=teacher, quantize=8, name="qat", **common)
    return str(work / "qat" / "weights" / "best.pt"), data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a QAT checkpoint (yolo-kd train ... quantize=8)")
    p.add_argument("--data", default=None)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--work", default="runs/trt_qat_check")
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("check_tensorrt_qat: no CUDA GPU here; run it on a machine with one")
    model, data = a.model, a.data
    if model is None:
        model, data = _tiny_qat_student(Path(a.work), a.imgsz)
    report = export_and_verify(model, format="engine", imgsz=a.imgsz, quantize=8, data=data, device="0")
    assert report["int8_ranges"] == "learnt in QAT", report["int8_ranges"]
    m = report["mAP50-95"]
    print(
        f"INT8 engine verified: mAP50-95 {m['exported']:.4f} vs fp32 {m['pytorch']:.4f} "
        f"({100 * m['drop']:+.2f} points), {report['size_mb']['exported']:.1f} MB, "
        f"{report['latency_ms_median']['exported']:.2f} ms/img"
    )


if __name__ == "__main__":
    main()

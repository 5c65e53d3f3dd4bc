"""GPU check: export a distilled student to a TensorRT engine and verify it (needs CUDA and `tensorrt`).

fp16 by default; with ``--qat`` an INT8 QAT + KD student (needs `.[qat]`) whose engine must carry the ranges learnt
in QAT (explicit Q/DQ, no calibration), reported next to the same weights in fp32. Trains nothing if a student is
given; otherwise makes a tiny dataset and 1-epoch models so the check runs anywhere with a GPU in a few minutes:

    python scripts/check_tensorrt.py                       # self-contained, fp16
    python scripts/check_tensorrt.py --qat                 # self-contained, INT8 QAT + KD
    python scripts/check_tensorrt.py --model runs/detect/train/weights/best.pt --data data.yaml --imgsz 640 [--qat]
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


def _tiny_student(work: Path, imgsz: int, qat: bool) -> tuple[str, str]:
    """A tiny dataset and a 1-epoch student on GPU 0: plain (fp16 check) or QAT + KD from a 1-epoch teacher."""
    from ultralytics import YOLO

    from yolo_kd import KDDetectionTrainer
    from yolo_kd.dataset import make_dataset

    data = str(make_dataset(work / "data", "trt", n_train=64, n_val=32, imgsz=imgsz))
    common = dict(data=data, epochs=1, imgsz=imgsz, batch=16, device=0, project=str(work), exist_ok=True, plots=False)
    if not qat:
        YOLO("yolov8n.yaml").train(name="student", amp=False, **common)
        return str(work / "student" / "weights" / "best.pt"), data
    YOLO("yolov8s.yaml").train(name="teacher", **common)
    teacher = str(work / "teacher" / "weights" / "best.pt")
    YOLO("yolov8n.yaml").train(trainer=KDDetectionTrainer, teacher=teacher, quantize=8, name="qat", **common)
    return str(work / "qat" / "weights" / "best.pt"), data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a student checkpoint (with --qat: from yolo-kd train quantize=8)")
    p.add_argument("--data", default=None)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--qat", action="store_true", help="INT8 engine of a QAT + KD student instead of fp16")
    p.add_argument("--work", default="runs/trt_check")
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("check_tensorrt: no CUDA GPU here; run it on a machine with one")
    model, data = a.model, a.data
    if model is None:
        model, data = _tiny_student(Path(a.work), a.imgsz, a.qat)
    quantize = 8 if a.qat else 16
    report = export_and_verify(model, format="engine", imgsz=a.imgsz, quantize=quantize, data=data, device="0")
    if a.qat:
        assert report["int8_ranges"] == "learnt in QAT", report["int8_ranges"]
    m = report["mAP50-95"]
    print(
        f"{'INT8' if a.qat else 'fp16'} engine verified: mAP50-95 {m['exported']:.4f} vs PyTorch {m['pytorch']:.4f} "
        f"({100 * m['drop']:+.2f} points), {report['size_mb']['exported']:.1f} MB, "
        f"{report['latency_ms_median']['exported']:.2f} ms/img"
    )


if __name__ == "__main__":
    main()

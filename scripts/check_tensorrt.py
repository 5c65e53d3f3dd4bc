"""GPU check: export a distilled student to an fp16 TensorRT engine and verify it (needs CUDA and `tensorrt`).

Trains nothing if a student is given; otherwise makes a tiny dataset and a 1-epoch student so the check runs
anywhere with a GPU in a few minutes:

    python scripts/check_tensorrt.py                       # self-contained
    python scripts/check_tensorrt.py --model runs/detect/train/weights/best.pt --data data.yaml --imgsz 640
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # a benchmark installs nothing behind the user's back
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from yolo_kd.export import export_and_verify  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--work", default="runs/trt_check")
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("check_tensorrt: no CUDA GPU here; run it on a machine with one")
    model, data = a.model, a.data
    if model is None:
        from ultralytics import YOLO

        from yolo_kd.dataset import make_dataset

        data = str(make_dataset(Path(a.work) / "data", "trt", n_train=64, n_val=32, imgsz=a.imgsz))
        YOLO("yolov8n.yaml").train(
            data=data,
            epochs=1,
            imgsz=a.imgsz,
            batch=16,
            device=0,
            project=a.work,
            name="student",
            exist_ok=True,
            plots=False,
            amp=False,
        )
        model = str(Path(a.work) / "student" / "weights" / "best.pt")
    report = export_and_verify(model, format="engine", imgsz=a.imgsz, half=True, data=data, device="0")
    print(
        f"engine verified: mAP50-95 drop {100 * report['mAP50-95']['drop']:+.2f} points, "
        f"max raw diff {report['max_abs_output_diff']:.3g}, {report['latency_ms_median']['exported']:.2f} ms/img"
    )


if __name__ == "__main__":
    main()

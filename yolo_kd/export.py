"""``yolo-kd export``: Ultralytics' exporter, then a verification of what came out.

The export itself is Ultralytics' (``YOLO(pt).export(...)``); this module adds the checks a deployment needs:
mAP50-95 of the exported file through Ultralytics' own backend next to the PyTorch student's, the largest raw-output
difference on fixed images, file size and median latency, written to ``export_report.{json,md}`` beside the model.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import KDConfigError

# Python modules each edge format needs, checked before exporting so nothing is installed behind the user's back.
FORMAT_MODULES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxslim", "onnxruntime"),
    "litert": ("litert_torch", "ai_edge_litert"),
    "openvino": ("openvino",),
    "engine": ("tensorrt", "onnx"),
}
FP32_TOLERANCE = 0.005  # an fp32 export may lose at most 0.5 mAP50-95 points against the PyTorch student


class ExportError(KDConfigError):
    """A failed export or verification, reported as one line."""


def formats() -> dict[str, str]:
    """Ultralytics' export format arguments mapped to their file suffixes."""
    from ultralytics.engine.exporter import export_formats

    table = export_formats()
    return {arg: suffix for arg, suffix in zip(table["Argument"], table["Suffix"]) if arg != "-"}


def resolve_checkpoint(model: str | Path) -> Path:
    """A checkpoint path, or a run folder (then its ``weights/best.pt``)."""
    path = Path(model)
    if path.is_dir():
        path = path / "weights" / "best.pt"
    if not path.is_file():
        raise ExportError(f"model={model}: no such checkpoint (give a .pt file or a run folder with weights/best.pt)")
    return path


def check_request(fmt: str, int8: bool, data: str | None, device: str | None) -> None:
    """Refuse, in one line, what cannot work here, before anything is written."""
    known = formats()
    if fmt not in known:
        raise ExportError(f"format={fmt} is unknown; Ultralytics exports: {', '.join(sorted(known))}")
    if fmt == "engine" and not torch.cuda.is_available():
        raise ExportError("format=engine (TensorRT) needs a CUDA GPU, and this machine has none")
    if int8 and not data:
        raise ExportError("int8=True needs calibration images: pass data=path/to/data.yaml")
    missing = [m for m in FORMAT_MODULES.get(fmt, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(
            f"format={fmt} needs {missing}, which are not installed; install them with: pip install -e '.[export]'"
        )


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def _fixed_images(data: dict, imgsz: int, n: int = 4) -> list[torch.Tensor]:
    """The first ``n`` validation images, letterboxed to imgsz, as (1, 3, H, W) float tensors in [0, 1]."""
    import cv2
    from ultralytics.data.augment import LetterBox
    from ultralytics.data.utils import IMG_FORMATS

    val = Path(data["val"] if isinstance(data["val"], (str, Path)) else data["val"][0])
    if val.is_file():  # an image list, one path a line ('./' relative to the list), as Ultralytics reads it
        lines = [x.strip() for x in val.read_text().splitlines() if x.strip()]
        candidates = [val.parent / x[2:] if x.startswith("./") else Path(x) for x in lines]
    else:
        candidates = list(val.rglob("*"))
    files = sorted(p for p in candidates if p.suffix[1:].lower() in IMG_FORMATS)[:n]
    if not files:
        raise ExportError(f"no validation images found under {val} to compare outputs on")
    box = LetterBox((imgsz, imgsz), auto=False)
    out = []
    for f in files:
        img = box(image=cv2.imread(str(f)))[..., ::-1].transpose(2, 0, 1)  # BGR HWC -> RGB CHW
        out.append(torch.from_numpy(np.ascontiguousarray(img)).float().unsqueeze(0) / 255)
    return out


def _first_tensor(y: Any) -> torch.Tensor:
    while isinstance(y, (list, tuple)):
        y = y[0]
    return torch.as_tensor(y).float().cpu()


def _raw_outputs_and_latency(
    weights: Path, images: list[torch.Tensor], runs: int, device: torch.device, fp16: bool = False
) -> tuple[list, float]:
    """Raw decoded outputs on ``images`` through Ultralytics' AutoBackend, and the median ms per image."""
    from ultralytics.nn.autobackend import AutoBackend

    backend = AutoBackend(str(weights), device=device, fp16=fp16, verbose=False)
    backend.eval()
    outputs, times = [], []
    with torch.no_grad():
        for im in images:
            outputs.append(_first_tensor(backend(im.to(device).half() if fp16 else im.to(device))))
        for _ in range(runs):
            for im in images:
                x = im.to(device).half() if fp16 else im.to(device)
                times.append(wall_seconds(partial(backend, x), device) * 1000)
    return outputs, statistics.median(times)


def wall_seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one call of ``fn``, with the GPU's queued work finished on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def export_and_verify(
    model: str | Path,
    format: str = "onnx",
    imgsz: int | None = None,
    half: bool = False,
    int8: bool = False,
    data: str | None = None,
    device: str | None = None,
    runs: int = 20,
    batch: int = 8,
    **export_kwargs: Any,
) -> dict[str, Any]:
    """Export ``model`` with Ultralytics, verify the result, write the reports; return the report dict."""
    from ultralytics import YOLO
    from ultralytics.data.utils import check_det_dataset

    pt = resolve_checkpoint(model)
    try:
        ckpt = torch.load(pt, map_location="cpu", weights_only=False)
        train_args = ckpt.get("train_args", {}) if isinstance(ckpt, dict) else {}
        assert isinstance(ckpt, dict) and (ckpt.get("ema") or ckpt.get("model")) is not None
    except Exception:
        raise ExportError(f"model={model}: not an Ultralytics checkpoint") from None
    # int8 calibrates on images the user names; fp32/fp16 verification may fall back to the training data
    check_request(format, int8, data, device)
    data = data or train_args.get("data")
    imgsz = int(imgsz or train_args.get("imgsz") or 640)
    if not data:
        raise ExportError("no validation data to verify against: pass data=path/to/data.yaml")

    before = set(pt.parent.iterdir())
    try:
        exported = Path(
            YOLO(str(pt)).export(
                format=format, imgsz=imgsz, half=half, int8=int8, data=data, device=device, **export_kwargs
            )
        )
        report = _verify(pt, exported, format, imgsz, half, int8, data, runs, batch, check_det_dataset(data))
    except Exception as e:
        for p in set(pt.parent.iterdir()) - before:  # leave nothing half-made behind
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        if isinstance(e, KDConfigError):
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise ExportError(f"export to {format} failed: {reason}") from None
    return report


def _verify(
    pt: Path,
    exported: Path,
    fmt: str,
    imgsz: int,
    half: bool,
    int8: bool,
    data: str,
    runs: int,
    batch: int,
    data_dict: dict,
) -> dict[str, Any]:
    from ultralytics import YOLO

    # TensorRT engines run on the GPU only; every other format is verified on the CPU, as an edge board would run it
    device = torch.device("cuda", 0) if fmt == "engine" else torch.device("cpu")

    def mean_ap(weights: Path) -> float:
        m = YOLO(str(weights), task="detect").val(
            data=data,
            imgsz=imgsz,
            batch=batch if weights.suffix == ".pt" else 1,
            device="0" if device.type == "cuda" else "cpu",
            rect=False,  # exported models run at the fixed export size; PyTorch must see the very same inputs
            plots=False,
            verbose=False,
            half=False,
            project=str(exported.parent / "export_val"),
            name=weights.stem,
            exist_ok=True,
        )
        return float(m.box.map)

    images = _fixed_images(data_dict, imgsz)
    ref, ref_ms = _raw_outputs_and_latency(pt, images, runs, device)
    out, out_ms = _raw_outputs_and_latency(exported, images, runs, device, fp16=half and fmt == "engine")
    max_diff = max(float((a - b).abs().max()) for a, b in zip(ref, out))
    map_pt, map_ex = mean_ap(pt), mean_ap(exported)
    shutil.rmtree(exported.parent / "export_val", ignore_errors=True)
    precision = "int8" if int8 else "fp16" if half else "fp32"
    report = {
        "model": str(pt),
        "exported": str(exported),
        "format": fmt,
        "precision": precision,
        "imgsz": imgsz,
        "data": data,
        "mAP50-95": {"pytorch": map_pt, "exported": map_ex, "drop": map_pt - map_ex},
        "max_abs_output_diff": max_diff,
        "size_mb": {"pytorch": _size_mb(pt), "exported": _size_mb(exported)},
        "latency_ms_median": {"pytorch": ref_ms, "exported": out_ms},
        "latency_device": str(device),
        "images_compared": len(images),
        "passed": precision != "fp32" or map_pt - map_ex <= FP32_TOLERANCE,
    }
    base = exported.parent / f"{pt.stem}_{fmt}{'_' + precision if precision != 'fp32' else ''}_export_report"
    md = report_markdown(report)
    Path(f"{base}.json").write_text(json.dumps(report, indent=2))
    Path(f"{base}.md").write_text(md)
    report["report_md"], report["report_json"] = f"{base}.md", f"{base}.json"
    print(md)
    if not report["passed"]:
        raise ExportError(
            f"{fmt} export loses {100 * (map_pt - map_ex):.2f} mAP50-95 points against the PyTorch student "
            f"({map_ex:.4f} vs {map_pt:.4f}; fp32 allows {100 * FP32_TOLERANCE:.1f})"
        )
    return report


def report_markdown(r: dict[str, Any]) -> str:
    """The export report as a markdown table."""
    m, s, t = r["mAP50-95"], r["size_mb"], r["latency_ms_median"]
    return "\n".join(
        [
            f"# Export report: {r['format']} ({r['precision']}, imgsz {r['imgsz']})",
            "",
            "| | PyTorch | exported |",
            "|---|---|---|",
            f"| mAP50-95 | {m['pytorch']:.4f} | {m['exported']:.4f} (drop {100 * m['drop']:+.2f} points) |",
            f"| size (MB) | {s['pytorch']:.1f} | {s['exported']:.1f} |",
            f"| median latency, {r['latency_device']}, batch 1 (ms) | {t['pytorch']:.1f} | {t['exported']:.1f} |",
            "",
            f"Largest absolute raw-output difference on {r['images_compared']} fixed images: "
            f"{r['max_abs_output_diff']:.3g}",
            f"Verdict: {'PASS' if r['passed'] else 'FAIL'} ({r['exported']})",
            "",
        ]
    )

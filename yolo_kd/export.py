"""``yolo-kd export``: Ultralytics' exporter, then a verification of what came out.

The export itself is Ultralytics' (``YOLO(pt).export(...)``); this module adds the checks a deployment needs:
mAP50-95 of the exported file through Ultralytics' own backend next to the PyTorch student's, the largest raw-output
difference on fixed images, file size and median latency, written to ``export_report.{json,md}`` beside the model.

Precision is Ultralytics' ``quantize=8|16|32`` (``int8=``/``half=`` still work, with Ultralytics' deprecation warning).
An INT8 export of a QAT checkpoint (``yolo-kd train ... quantize=8``) carries the ranges learnt in training as Q/DQ
nodes, as Ultralytics' exporter writes them, with no calibration; it is compared with the same weights in fp32.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import compat, qat
from .config import KDConfigError
from .inputs import check_writable, read_checkpoint

# Python modules each edge format needs, checked before exporting so nothing is installed behind the user's back.
FORMAT_MODULES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxslim", "onnxruntime"),
    "litert": ("litert_torch", "ai_edge_litert"),
    "openvino": ("openvino",),
    "engine": ("tensorrt", "onnx"),
}
# ... and what their INT8 calibration needs besides (Ultralytics quantizes OpenVINO models with NNCF)
INT8_MODULES: dict[str, tuple[str, ...]] = {"openvino": ("nncf",)}
FP32_TOLERANCE = 0.005  # an fp32 export may lose at most 0.5 mAP50-95 points against the PyTorch student


class ExportError(KDConfigError):
    """A failed export or verification, reported as one line."""


def formats() -> dict[str, str]:
    """Ultralytics' export format arguments mapped to their file suffixes."""
    from ultralytics.engine.exporter import export_formats

    table = export_formats()
    return {arg: suffix for arg, suffix in zip(table["Argument"], table["Suffix"]) if arg != "-"}


# Format names Ultralytics' Exporter also accepts (8.4.190), mapped as it maps them, so that the checks here see the
# format it will export.
FORMAT_ALIASES = {
    **dict.fromkeys(("tensorrt", "trt"), "engine"),
    # not 'mlmodel': Ultralytics writes the legacy .mlmodel for it, which 'coreml' would not
    **dict.fromkeys(("mlpackage", "mlprogram", "apple", "ios"), "coreml"),
    **dict.fromkeys(("huawei", "cann", "om"), "ascend"),
    **dict.fromkeys(("vitis", "vitisai", "versal"), "xilinx"),
    **dict.fromkeys(("tflite", "tfjs"), "litert"),  # deprecated by Ultralytics, exported as LiteRT
}


# The precision Ultralytics' exporter (8.4.190) uses for a format when quantize is unset: its INT8-only formats
# calibrate then too (so they need data= as quantize=8 does), Ascend and Rockchip export fp16.
UNSET_PRECISION: dict[str, int | str] = {
    **dict.fromkeys(("deepx", "axelera", "imx", "edgetpu", "hailo", "xilinx"), 8),
    "qnn": "w8a16",
    "ascend": 16,
    "rknn": 16,
}
RKNN_INT8_ONLY = {"rv1103", "rv1106", "rv1103b", "rv1106b"}  # Rockchip chips Ultralytics exports INT8 only


def canonical_format(fmt: str) -> str:
    """Ultralytics' name for format ``fmt``: lower case, its aliases mapped (``tflite`` -> ``litert``, ...)."""
    fmt = str(fmt).lower()
    return FORMAT_ALIASES.get(fmt, fmt)


def export_size(imgsz: Any, stride: int) -> int:
    """The square export size: ``imgsz`` rounded up to the model's stride, as Ultralytics' exporter rounds it.

    Args:
        imgsz: The size given (a whole number).
        stride: The model's largest stride.

    Returns:
        The size the exported model takes, which verification letterboxes its images to.
    """
    from ultralytics.utils.checks import check_imgsz

    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 1:
        raise ExportError(f"imgsz={imgsz}: give one whole number (yolo-kd exports and verifies square inputs)")
    return int(check_imgsz(imgsz, stride=stride, max_dim=1))


def resolve_checkpoint(model: str | Path) -> Path:
    """A checkpoint path, or a run folder (then its ``weights/best.pt``)."""
    path = Path(model)
    if path.is_dir():
        path = path / "weights" / "best.pt"
    if not path.is_file():
        raise ExportError(f"model={model}: no such checkpoint (give a .pt file or a run folder with weights/best.pt)")
    return path


def export_precision(quantize: Any = None, half: Any = None, int8: Any = None) -> int | str | None:
    """The ``quantize=`` an export asks for, the deprecated ``int8=``/``half=`` mapped onto it as Ultralytics does.

    Args:
        quantize: Ultralytics' ``quantize=`` (8, 16, 32, 'int8', ...); it wins over the legacy flags.
        half: Deprecated fp16 flag.
        int8: Deprecated int8 flag (wins over ``half``).

    Returns:
        8, 16, 32, one of Ultralytics' w-notation schemes, or None (fp32).
    """
    from ultralytics.utils import deprecation_warn

    if quantize is None and (int8 is not None or half is not None):  # Ultralytics' mapping (cfg._handle_deprecation)
        on = {
            k: v is not None and str(v).strip().lower() not in {"none", "false", "0"}
            for k, v in (("int8", int8), ("half", half))
        }
        quantize = 8 if on["int8"] else 16 if on["half"] else None
        deprecation_warn("int8" if int8 is not None else "half", "quantize")  # Ultralytics' one-line warning
    return qat.quantize_value(quantize)


def format_precision(fmt: str, quantize: int | str | None, name: str | None = None) -> int | str | None:
    """The precision Ultralytics exports ``fmt`` at when asked for ``quantize`` (unset: the format's own default).

    Args:
        fmt: Ultralytics' format name.
        quantize: The canonical precision asked for (``export_precision``).
        name: The export's ``name=`` (a Rockchip chip, for format=rknn).

    Returns:
        The precision the exporter will use, as Ultralytics' ``Exporter.__call__`` sets it.
    """
    if fmt == "rknn" and str(name or "").lower() in RKNN_INT8_ONLY and quantize in {None, 8}:
        return 8
    return UNSET_PRECISION.get(fmt, quantize) if quantize is None else quantize


def calibrates(fmt: str, quantize: int | str | None) -> bool:
    """Whether this export calibrates on ``data=`` images: an INT8 activation scheme, in a format that takes data.

    CoreML's and MNN's INT8 quantize weights only, and Ultralytics refuses ``data=`` for them. Where data is
    missing, Ultralytics would calibrate on a sample set it downloads; yolo-kd asks for the user's images instead.
    """
    from ultralytics.engine.exporter import export_formats

    table = export_formats()
    return quantize in {8, "w8a16"} and "data" in dict(zip(table["Argument"], table["Arguments"])).get(fmt, [])


def check_request(
    fmt: str,
    quantize: int | str | None,
    data: str | None,
    device: str | None,
    is_qat: bool,
    int8_box_tail: str | None = None,
    export_kwargs: dict[str, Any] | None = None,
) -> None:
    """Refuse, in one line, what cannot work here, before anything is written.

    Args:
        fmt: Ultralytics' format name.
        quantize: The canonical precision (``export_precision``).
        data: The ``data=`` given, if any.
        device: The export device.
        is_qat: The checkpoint carries QAT quantizers.
        int8_box_tail: The ``int8_box_tail=`` given, if any.
        export_kwargs: The further Ultralytics export arguments given.
    """
    from ultralytics.engine.exporter import (
        FP16_FORMATS,
        FP32_UNSUPPORTED_FORMATS,
        INT8_FORMATS,
        W8A16_FORMATS,
        W8A32_FORMATS,
    )

    known = formats()
    if fmt == "mlmodel":  # Ultralytics writes a legacy .mlmodel for it; yolo-kd checks and names .mlpackage exports
        raise ExportError("format=mlmodel (CoreML's legacy file) is not exported here: use format=coreml (.mlpackage)")
    if fmt not in known:
        raise ExportError(f"format={fmt} is unknown; Ultralytics exports: {', '.join(sorted(known))}")
    kwargs = export_kwargs or {}
    if kwargs.get("nms"):  # its (max_det, 6) output has nothing to compare with the student's raw (4 + nc, anchors)
        raise ExportError(
            "nms=True: yolo-kd verifies the exported graph's raw outputs against the student's, and an NMS graph has "
            "none; export without nms (NMS then runs in Ultralytics' predictor), or with Ultralytics' own exporter"
        )
    if kwargs.get("batch", 1) != 1 and not kwargs.get("dynamic"):  # verification feeds one image at a time
        raise ExportError(
            f"batch={kwargs['batch']}: a static batch other than 1 cannot be verified image by image; add dynamic=True "
            "(batch is then the largest batch the model takes)"
        )
    if fmt == "engine" and not torch.cuda.is_available():
        raise ExportError("format=engine (TensorRT) needs a CUDA GPU, and this machine has none")
    if int8_box_tail is not None:
        if int8_box_tail not in compat.BOX_TAILS:
            raise ExportError(f"int8_box_tail={int8_box_tail!r}: choose one of {', '.join(compat.BOX_TAILS)}")
        if fmt != "litert" or quantize != 8 or is_qat:
            raise ExportError("int8_box_tail= applies to full-INT8 LiteRT exports only (format=litert quantize=8)")
    if is_qat:
        qat.check_installed("a QAT checkpoint (its quantizers load through ModelOpt)")
        if fmt not in qat.QAT_EXPORT_FORMATS:
            raise ExportError(
                f"format={fmt} cannot carry a QAT checkpoint's learnt INT8 ranges (they are exported for "
                f"{', '.join(qat.QAT_EXPORT_FORMATS)}); export one of those, or export the fp32 student with quantize=8"
            )
        if quantize not in {None, 8}:
            raise ExportError(f"quantize={quantize}: a QAT checkpoint exports INT8 only (quantize=8)")
        for needed in {fmt, "onnx"} if fmt == "openvino" else {fmt}:  # OpenVINO is made from the Q/DQ ONNX
            _check_modules(needed)
        return
    supported = {8: INT8_FORMATS, 16: FP16_FORMATS, "w8a16": W8A16_FORMATS, "w8a32": W8A32_FORMATS}.get(quantize)
    if (supported is not None and fmt not in supported) or (quantize == 32 and fmt in FP32_UNSUPPORTED_FORMATS):
        ok = sorted(supported or set(known) - FP32_UNSUPPORTED_FORMATS)
        raise ExportError(f"format={fmt} does not export quantize={quantize}; formats that do: {', '.join(ok)}")
    calibrated = calibrates(fmt, quantize)
    if calibrated and not data:
        raise ExportError(
            f"format={fmt} quantize={quantize} calibrates on your images: pass data=path/to/data.yaml "
            "(nothing is downloaded in its place)"
        )
    _check_modules(fmt, calibrated=calibrated)


def _check_modules(fmt: str, calibrated: bool = False) -> None:
    """Refuse a format whose Python packages are missing (nothing is installed behind the user's back).

    Args:
        fmt: Ultralytics' format name.
        calibrated: An INT8 export calibrated here, whose format may need more packages (``INT8_MODULES``).
    """
    needed = FORMAT_MODULES.get(fmt, ()) + (INT8_MODULES.get(fmt, ()) if calibrated else ())
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
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
    """Raw decoded outputs on ``images`` through Ultralytics' AutoBackend, and the median ms per image.

    The images go in as fp32: AutoBackend casts them to half only where the model's input binding is fp16 (an fp16
    TensorRT engine built with the fp16 flag keeps fp32 inputs, and would read a half tensor as garbage).
    """
    from ultralytics.nn.autobackend import AutoBackend

    backend = AutoBackend(str(weights), device=device, fp16=fp16, verbose=False)
    backend.eval()
    outputs, times = [], []
    with torch.no_grad():
        for im in images:
            outputs.append(_first_tensor(backend(im.to(device))))
        for _ in range(runs):
            for im in images:
                times.append(wall_seconds(partial(backend, im.to(device)), device) * 1000)
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


@dataclass
class Verification:
    """What one verification compares: the checkpoint and its export, both in the private export folder.

    Attributes:
        pt: The checkpoint (the private copy).
        exported: The exported model (file or folder) beside it.
        fmt: Ultralytics' format name.
        imgsz: Export and validation image size.
        quantize: The canonical precision (8, 16, None for fp32, ...).
        reference: What the export is compared to: the checkpoint, or for a QAT checkpoint its weights in fp32.
        data: The data YAML validated on.
        data_dict: That YAML as Ultralytics resolved it.
        runs: Latency repetitions over the fixed images.
        batch: PyTorch validation batch size (exported models validate at batch 1).
        qat: The checkpoint is a QAT one (its INT8 ranges were learnt in training, not calibrated at export).
    """

    pt: Path
    exported: Path
    fmt: str
    imgsz: int
    quantize: int | str | None
    reference: Path
    data: str
    data_dict: dict
    runs: int
    batch: int
    qat: bool = False

    @property
    def precision(self) -> str:
        """int8, fp16, fp32 or Ultralytics' scheme name."""
        return precision_name(self.quantize)

    @property
    def half(self) -> bool:
        """An fp16 export."""
        return self.quantize == 16

    @property
    def device(self) -> torch.device:
        """TensorRT engines run on the GPU only; every other format on the CPU, as an edge board would run it."""
        return torch.device("cuda", 0) if self.fmt == "engine" else torch.device("cpu")


def export_and_verify(
    model: str | Path,
    format: str = "onnx",
    imgsz: int | None = None,
    quantize: int | str | None = None,
    data: str | None = None,
    device: str | None = None,
    runs: int = 20,
    val_batch: int = 8,
    overwrite: bool = False,
    half: bool | None = None,
    int8: bool | None = None,
    int8_box_tail: str | None = None,
    **export_kwargs: Any,
) -> dict[str, Any]:
    """Export ``model`` with Ultralytics, verify the result, put the files in place; return the report dict.

    Everything is made in a private temporary folder beside the checkpoint (the checkpoint is copied there) and only
    finished, verified files are moved beside the checkpoint, so a failure or interrupt at any point leaves the folder
    exactly as it was. A failed verification keeps its report, as ``<report>_failed.{json,md}``.

    Args:
        model: A checkpoint, or a run folder (its ``weights/best.pt``).
        format: Ultralytics' export format.
        imgsz: Export size (default: the training size recorded in the checkpoint).
        quantize: Ultralytics' precision: 8 (INT8; needs ``data`` unless the checkpoint is a QAT one), 16, 32/None.
        data: Data YAML to validate on (default: the one recorded in the checkpoint).
        device: Export device.
        runs: Latency repetitions.
        val_batch: The PyTorch student's validation batch size (``batch`` is Ultralytics' export batch).
        overwrite: Replace an earlier export and report of the same names (only once the new one passed).
        half: Deprecated, ``quantize=16`` (Ultralytics' alias, with its warning).
        int8: Deprecated, ``quantize=8`` (Ultralytics' alias, with its warning).
        int8_box_tail: Full-INT8 LiteRT only: the precision of the box decode at the graph's end, ``float``
            (default: the heavy layers INT8, the small tail in float), ``int16`` (integer-only accelerators) or
            ``int8`` (Ultralytics' graph as it is, which loses box precision); see ``compat.litert_int8_box_tail``.
        **export_kwargs: Further Ultralytics export arguments.

    Returns:
        The verification report.
    """
    from ultralytics import YOLO
    from ultralytics.data.utils import check_det_dataset

    format = canonical_format(format)
    for key, value in (("runs", runs), ("val_batch", val_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExportError(f"{key}={value!r}: give a whole number of at least 1")
    pt = resolve_checkpoint(model)
    ckpt = read_checkpoint("model", pt)
    train_args, is_qat = ckpt.get("train_args") or {}, qat.is_qat_checkpoint(ckpt)
    quantize = format_precision(format, export_precision(quantize, half, int8), export_kwargs.get("name"))
    # int8 calibrates on images the user names (a QAT checkpoint learnt its ranges); verification may fall back to
    # the training data
    check_request(format, quantize, data, device, is_qat, int8_box_tail, export_kwargs)
    quantize = 8 if is_qat else quantize  # the Q/DQ graph of a QAT checkpoint is INT8 whatever was asked
    box_tail = (int8_box_tail or "float") if format == "litert" and quantize == 8 else None
    data = data or train_args.get("data")
    stride = int(max(getattr(ckpt.get("ema") or ckpt.get("model"), "stride", [32])))
    imgsz = export_size(imgsz or train_args.get("imgsz") or 640, stride)
    if not data:
        raise ExportError("no validation data to verify against: pass data=path/to/data.yaml")
    check_writable("model", pt.parent)
    base = report_base(pt, format, precision_name(quantize))
    # An fp32/fp16 export is named <stem><suffix>; Ultralytics names quantized ones otherwise (best_int8.onnx, ...),
    # which the check of the exported file's own name below covers.
    plain = [pt.parent / f"{pt.stem}{formats()[format]}"] if quantize in {None, 16, 32} else []
    _check_free([*plain, pt.parent / f"{base}.json", pt.parent / f"{base}.md"], overwrite)
    # data= only where it calibrates: Ultralytics refuses it for formats without INT8 calibration (torchscript, ...)
    calibration = {"data": data} if calibrates(format, quantize) else {}
    work = Path(tempfile.mkdtemp(prefix=".yolo_kd_export_", dir=pt.parent))
    try:
        copy = work / pt.name
        shutil.copy2(pt, copy)
        # the export is compared with the fp32 student: for a QAT checkpoint, its trained weights without quantizers
        reference = qat.save_fp32_reference(ckpt, work / f"{pt.stem}_fp32.pt") if is_qat else copy
        del ckpt
        via_onnx = is_qat and format == "openvino"  # Ultralytics refuses it; made from the Q/DQ ONNX instead
        with compat.litert_int8_box_tail(box_tail or "int8"):
            exported = Path(
                YOLO(str(copy)).export(
                    format="onnx" if via_onnx else format,
                    imgsz=imgsz,
                    quantize=quantize,
                    device=device,
                    **calibration,
                    **export_kwargs,
                )
            )
        if box_tail is not None:
            _check_box_tail(exported, box_tail)
        if via_onnx:
            exported = qat.openvino_from_onnx(exported)
        final = pt.parent / exported.name
        _check_free([final], overwrite)
        v = Verification(
            copy, exported, format, imgsz, quantize, reference, data, check_det_dataset(data), runs, val_batch, is_qat
        )
        report = {**verify(v, pt, final), "int8_box_tail": box_tail}
        _place(report, exported, final, work)
    except KDConfigError:
        raise
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise ExportError(f"export to {format} failed: {reason}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the private folder: whatever it still holds is this run's
    if not report["passed"]:
        m = report["mAP50-95"]
        raise ExportError(
            f"{format} export loses {100 * m['drop']:.2f} mAP50-95 points against the PyTorch student "
            f"({m['exported']:.4f} vs {m['pytorch']:.4f}; fp32 allows {100 * FP32_TOLERANCE:.1f}); "
            f"nothing replaced, report: {report['report_md']}"
        )
    return report


def _check_box_tail(exported: Path, box_tail: str) -> None:
    """Refuse a LiteRT file whose boxes reach the output in another precision than asked (the rule matched nothing)."""
    tflite = exported if exported.suffix == ".tflite" else next(exported.rglob("*.tflite"))
    got, want = compat.litert_box_tail_dtype(tflite), {"float": "float32"}.get(box_tail, box_tail)
    if got != want:
        raise ExportError(
            f"int8_box_tail={box_tail}: the exported boxes are {got}; this litert-torch names the graph's tensors "
            "otherwise than yolo-kd expects (compat.LITERT_BOX_TAIL)"
        )


def precision_name(quantize: int | str | None) -> str:
    """The precision an export runs in: int8, fp16, fp32, or Ultralytics' scheme name (w8a16, w8a32)."""
    return {8: "int8", 16: "fp16", 32: "fp32", None: "fp32"}.get(quantize, str(quantize))


def report_base(pt: Path, fmt: str, precision: str) -> str:
    """The export reports' file name, without extension, for checkpoint ``pt``."""
    return f"{pt.stem}_{fmt}{'_' + precision if precision != 'fp32' else ''}_export_report"


def _check_free(paths: list[Path], overwrite: bool) -> None:
    """Refuse to replace an earlier export or report unless ``overwrite`` was given."""
    taken = [p for p in paths if p.exists()]
    if taken and not overwrite:
        raise ExportError(
            f"{taken[0]} exists (an earlier export); give overwrite=True to replace it once the new export passes"
        )


def _mean_ap(v: Verification, weights: Path) -> float:
    """mAP50-95 of ``weights`` on the validation data, at the fixed export size, through Ultralytics' backend."""
    from ultralytics import YOLO

    m = YOLO(str(weights), task="detect").val(
        data=v.data,
        imgsz=v.imgsz,
        batch=v.batch if weights.suffix == ".pt" else 1,
        device="0" if v.device.type == "cuda" else "cpu",
        rect=False,  # exported models run at the fixed export size; PyTorch must see the very same inputs
        plots=False,
        verbose=False,
        quantize=None,  # fp32 PyTorch reference (Ultralytics' unset precision); exported files run as exported
        project=str(v.pt.parent / "export_val"),  # inside the private folder, removed with it
        name=weights.stem,
        exist_ok=True,
    )
    return float(m.box.map)


def verify(v: Verification, model: Path, final: Path) -> dict[str, Any]:
    """Compare the export with the checkpoint.

    Args:
        v: What to compare.
        model: The user's checkpoint, and ``final`` where the export will be moved: the paths the report names.

    Returns:
        The report (``passed`` False when an fp32 export loses more than ``FP32_TOLERANCE`` mAP50-95).
    """
    images = _fixed_images(v.data_dict, v.imgsz)
    ref, ref_ms = _raw_outputs_and_latency(v.reference, images, v.runs, v.device)
    out, out_ms = _raw_outputs_and_latency(v.exported, images, v.runs, v.device, fp16=v.half and v.fmt == "engine")
    max_diff = max(float((a - b).abs().max()) for a, b in zip(ref, out))
    map_pt, map_ex = _mean_ap(v, v.reference), _mean_ap(v, v.exported)
    ranges = None if v.quantize not in {8, "w8a16"} else "learnt in QAT" if v.qat else f"calibrated on {v.data}"
    return {
        "model": str(model),
        "exported": str(final),
        "format": v.fmt,
        "precision": v.precision,
        "imgsz": v.imgsz,
        "data": v.data,
        "mAP50-95": {"pytorch": map_pt, "exported": map_ex, "drop": map_pt - map_ex},
        "max_abs_output_diff": max_diff,
        "size_mb": {"pytorch": _size_mb(v.pt), "exported": _size_mb(v.exported)},
        "latency_ms_median": {"pytorch": ref_ms, "exported": out_ms},
        "latency_device": str(v.device),
        "images_compared": len(images),
        "int8_ranges": ranges,
        "passed": v.precision != "fp32" or map_pt - map_ex <= FP32_TOLERANCE,
    }


def _place(report: dict[str, Any], exported: Path, final: Path, work: Path) -> None:
    """Write the reports, then move them and a passed export from the private folder beside the checkpoint.

    A failed export stays behind (it is removed with the private folder); its reports are kept under the first free
    name ``<report>_failed``, ``<report>_failed2``, ..., so they never replace another report.

    Args:
        report: From ``verify``; its report paths are added here.
        exported: The export in the private folder.
        final: Where a passed export goes.
        work: The private folder.
    """
    model = Path(report["model"])
    base = report_base(model, report["format"], report["precision"])
    if not report["passed"]:
        report["exported"] += " (failed verification, not kept)"
        n, failed = 1, f"{base}_failed"
        while any((model.parent / f"{failed}{ext}").exists() for ext in (".md", ".json")):
            n += 1
            failed = f"{base}_failed{n}"
        base = failed
    report["report_md"], report["report_json"] = f"{model.parent / base}.md", f"{model.parent / base}.json"
    md = report_markdown(report)
    (work / f"{base}.md").write_text(md)
    (work / f"{base}.json").write_text(json.dumps(report, indent=2))
    moves = [(work / f"{base}.md", Path(report["report_md"])), (work / f"{base}.json", Path(report["report_json"]))]
    if report["passed"]:
        moves.insert(0, (exported, final))
    for src, dst in moves:
        if dst.is_dir():  # a folder format (OpenVINO, ...) replaced with overwrite=True: set the old one aside first
            os.replace(dst, work / f".old_{dst.name}")
        os.replace(src, dst)
    print(md)


def report_markdown(r: dict[str, Any]) -> str:
    """The export report as a markdown table."""
    m, s, t = r["mAP50-95"], r["size_mb"], r["latency_ms_median"]
    return "\n".join(
        [
            f"# Export report: {r['format']} ({r['precision']}, imgsz {r['imgsz']})",
            "",
            "| | PyTorch fp32 | exported |",
            "|---|---|---|",
            f"| mAP50-95 | {m['pytorch']:.4f} | {m['exported']:.4f} (drop {100 * m['drop']:+.2f} points) |",
            f"| size (MB) | {s['pytorch']:.1f} | {s['exported']:.1f} |",
            f"| median latency, {r['latency_device']}, batch 1 (ms) | {t['pytorch']:.1f} | {t['exported']:.1f} |",
            "",
            f"Largest absolute raw-output difference on {r['images_compared']} fixed images: "
            f"{r['max_abs_output_diff']:.3g}",
            *([f"INT8 ranges: {r['int8_ranges']}"] if r.get("int8_ranges") else []),
            *([f"Box decode and output concat: {r['int8_box_tail']}"] if r.get("int8_box_tail") else []),
            f"Verdict: {'PASS' if r['passed'] else 'FAIL'} ({r['exported']})",
            "",
        ]
    )

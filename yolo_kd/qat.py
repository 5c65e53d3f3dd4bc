"""Quantization-aware training (``quantize=8``) as yolo-kd meets it: Ultralytics' QAT through NVIDIA ModelOpt.

Ultralytics inserts the fake quantization itself (``prepare_qat`` in its trainer's ``_setup_train``, after
``setup_model``), saves the quantizers as data beside the plain module (``ckpt["modelopt"]``) and restores them on load
and resume. yolo-kd adds no QAT machinery of its own; this module only names the precision a request asks for, checks
that ModelOpt is installed before anything is written, and recognises a QAT checkpoint.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .errors import KDConfigError

# What Ultralytics' QAT imports (its MODELOPT_REQUIREMENTS): ModelOpt, and huggingface_hub, which ModelOpt's torch
# plugins import without declaring it. Installed by the `[qat]` extra.
QAT_MODULES: dict[str, str] = {"modelopt": "nvidia-modelopt", "huggingface_hub": "huggingface_hub"}
# Formats an INT8 export of a QAT model keeps its learnt ranges in: Ultralytics' exporter writes them as Q/DQ for onnx
# and engine (and refuses other formats for QAT models); OpenVINO is made here from that Q/DQ ONNX (openvino_from_onnx)
QAT_EXPORT_FORMATS = ("onnx", "engine", "openvino")


def quantize_value(value: Any, key: str = "quantize") -> int | str | None:
    """Ultralytics' canonical precision for a ``quantize=`` value (8, 16, 32, 'int8', 'fp16', ...).

    Args:
        value: The value given; None means unset (fp32).
        key: The key it was given under, for the error.

    Returns:
        8, 16, 32, one of Ultralytics' w-notation schemes, or None when unset.
    """
    from ultralytics.cfg import QUANTIZE_ALIASES, QUANTIZE_VALID_VALUES

    if value is None or str(value).strip().lower() in {"", "none"}:
        return None
    scheme = QUANTIZE_ALIASES.get(str(value).strip().lower())
    if scheme is None:
        raise KDConfigError(f"{key}={value} is invalid; Ultralytics takes quantize={QUANTIZE_VALID_VALUES}")
    return scheme


def missing_modules() -> list[str]:
    """The packages QAT needs that are not installed (pip names)."""
    missing = []
    for module, package in QAT_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ValueError:  # a module set to None in sys.modules: importing it fails, as when it is absent
            found = False
        if not found:
            missing.append(package)
    return missing


def check_installed(what: str) -> None:
    """Refuse, in one line, a QAT request when ModelOpt is not installed (Ultralytics would try to install it).

    Args:
        what: The request, in words (e.g. 'quantize=8').
    """
    missing = missing_modules()
    if missing:
        raise KDConfigError(
            f"{what} (INT8 quantization-aware training) needs {missing}, which are not installed; "
            "install them with: pip install -e '.[qat]'"
        )


def is_qat_checkpoint(ckpt: dict[str, Any]) -> bool:
    """Whether a checkpoint dict carries QAT quantizers (Ultralytics stores them as ``ckpt["modelopt"]``)."""
    return bool(ckpt.get("modelopt"))


def save_fp32_reference(ckpt: dict[str, Any], path: Path) -> Path:
    """Save a QAT checkpoint's trained weights without their quantizers: the fp32 student an INT8 export is compared to.

    Ultralytics pickles a QAT model with its quantizers stripped and re-applies them from ``ckpt["modelopt"]`` on
    load, so the same dict without that entry loads as the plain fp32 network.

    Args:
        ckpt: The QAT checkpoint (loaded, not modified).
        path: Where to write the copy (a private scratch folder).

    Returns:
        ``path``.
    """
    import torch

    torch.save({**ckpt, "modelopt": None}, path)
    return path


def openvino_from_onnx(onnx_file: Path) -> Path:
    """An OpenVINO model of a QAT checkpoint's Q/DQ ONNX export, with the INT8 ranges learnt in training.

    Ultralytics' OpenVINO exporter refuses QAT models (it would calibrate afresh with NNCF). OpenVINO reads the ONNX
    Q/DQ pairs as FakeQuantize and its CPU plugin runs those layers in INT8, so converting the ONNX keeps the learnt
    ranges. The folder is laid out as Ultralytics lays out its INT8 OpenVINO exports (``<stem>_int8_openvino_model``
    with the model and ``metadata.yaml``), so Ultralytics' backend loads it.

    Args:
        onnx_file: Ultralytics' ONNX export of the QAT checkpoint.

    Returns:
        The OpenVINO model folder, beside ``onnx_file``.
    """
    import openvino as ov
    from ultralytics.nn.backends.base import BaseBackend
    from ultralytics.utils import YAML

    folder = onnx_file.with_name(f"{onnx_file.stem}_int8_openvino_model")
    folder.mkdir()
    ov.save_model(ov.convert_model(str(onnx_file)), str(folder / f"{onnx_file.stem}.xml"), compress_to_fp16=False)
    YAML.save(folder / "metadata.yaml", BaseBackend.read_metadata(onnx_file))
    return folder

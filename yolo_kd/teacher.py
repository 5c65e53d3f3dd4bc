"""Load, check and run the frozen teacher."""

from __future__ import annotations

import copy
import hashlib
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_model_file
from .compat import detect_head_outputs
from .config import KDConfigError
from .hooks import DetectTap, find_detect_head


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, recorded in checkpoints so a resume can tell the teacher file has changed.

    Args:
        path: The file.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dense_branch_fused_away(model: nn.Module) -> bool:
    """Whether an end-to-end teacher (YOLO26, v10) was saved after Ultralytics' inference fusion removed its dense
    one2many branch: its outputs are then NMS-free detections, not the dense predictions pseudo-labels are cut from.

    Args:
        model: An Ultralytics detection model, as loaded.

    Returns:
        True for an end-to-end head that keeps only its one2one branch.

    Raises:
        ValueError: The model has no Detect head.
    """
    head = find_detect_head(model)
    return getattr(head, "one2one_cv2", None) is not None and getattr(head, "cv2", None) is None


def load_teacher_model(path: str | Path) -> nn.Module:
    """Load an Ultralytics detection checkpoint (or an open-vocabulary one, YOLOE-seg included) as fp32 on the CPU.

    Args:
        path: The teacher checkpoint.

    Returns:
        The model.

    Raises:
        KDConfigError: No path, no file, an unreadable file or a model without a Detect head, in one line.
    """
    if path is None or str(path) == "":
        raise KDConfigError("teacher= is required: the path of a trained Ultralytics detection checkpoint (.pt)")
    p = Path(path)
    if not p.is_file():
        raise KDConfigError(f"teacher={path}: no such file")
    try:
        model = load_model_file(p)
    except Exception as e:  # torch/pickle errors on truncated or foreign files: report, don't dump a deep traceback
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KDConfigError(f"teacher={path}: not a readable Ultralytics checkpoint ({msg})") from None
    task = getattr(model, "task", None)
    try:
        find_detect_head(model)
    except ValueError:
        task = None
    from .vocabulary import is_open_vocabulary

    # an open-vocabulary segmentation model (YOLOE-seg) teaches as the detector its vocabulary turns it into
    if task != "detect" and not (task == "segment" and is_open_vocabulary(model)):
        raise KDConfigError(f"teacher={path}: not a detection model (task={task!r}); KD needs a Detect-headed teacher")
    return model


def reduced_precision(device: torch.device) -> torch.dtype | None:
    """The dtype the teacher can run in natively on a device.

    Args:
        device: Where the teacher runs.

    Returns:
        fp16 on CUDA, bf16 on CPUs with native bf16, else None (fp32).
    """
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


class FrozenTeacher(nn.Module):
    """A fused, frozen teacher that always stays in eval mode and returns its raw head outputs.

    ``train(True)`` is ignored: the teacher's normalisation statistics must never move, whatever the trainer does to
    the modules around it.

    Args:
        model: An Ultralytics detection model (fused here).
        device: Where it runs.
        amp: Use reduced precision where native (see ``reduced_precision``); False keeps fp32.
        feats: Return the neck maps entering the head (the feature term's input); False skips their fp32 copies.
        cross_head: Cross-head KD will run the head on the student's maps (``head_outputs``): an fp16 teacher then
            keeps an fp32 copy of its head for it, so that the gradient through it cannot overflow.
    """

    def __init__(
        self, model: nn.Module, device: torch.device, amp: bool = True, feats: bool = True, cross_head: bool = False
    ) -> None:
        super().__init__()
        # False only for an end-to-end teacher whose dense branch was fused away before it reached us: its eval
        # output is then already NMS-free (B, max_det, 6), not the dense (B, 4 + C, A) predictions
        self.dense = not dense_branch_fused_away(model)
        head = find_detect_head(model)
        if getattr(head, "one2one_cv2", None) is not None:
            # End-to-end heads (YOLO26, v10): fusion keeps one branch. Keep the dense one2many branch, the one the
            # student's one2many branch is trained like; the sparse one2one scores would fight its top-k assignment.
            head.end2end = False
        model = model.float().fuse(verbose=False) if hasattr(model, "fuse") else model.float()
        for p in model.parameters():
            p.requires_grad_(False)
        self.dtype = reduced_precision(device) if amp else None
        half = device.type == "cuda" and self.dtype == torch.float16
        # the student's gradient flows back through this head: fp16 weights could overflow it (nothing scales it)
        self.cross_head = copy.deepcopy(find_detect_head(model)).to(device).eval() if cross_head and half else None
        if half:
            model = model.half()  # CUDA fp16 weights: no per-step cast of the weights by autocast
        # NHWC suits the oneDNN bf16 kernels on CPU and the tensor cores on CUDA; plain fp32 keeps NCHW.
        self.channels_last = self.dtype is not None
        model = model.to(device, memory_format=torch.channels_last) if self.channels_last else model.to(device)
        self.model = model.eval()
        self.device = device
        self.tap = DetectTap(self.model)
        self.feats = feats
        self.reg_max = find_detect_head(self.model).reg_max
        self.nc = find_detect_head(self.model).nc
        self.stride = self.model.stride
        self.names = getattr(self.model, "names", {})

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stay in eval mode whatever is asked (the teacher's BatchNorm statistics must never move).

        Args:
            mode: Ignored.

        Returns:
            The teacher, in eval mode.
        """
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Run the teacher once, without autograd.

        Args:
            images: The preprocessed batch (B, 3, H, W).

        Returns:
            ``{"boxes": (B, 4*R, A), "scores": (B, C, A), "feats": [...]}`` in fp32, and ``"pred"``, the decoded
            predictions (B, 4 + C, A) for pseudo-labels.
        """
        if self.dtype == torch.float16:
            images, ctx = images.half(), nullcontext()
        elif self.dtype == torch.bfloat16:
            ctx = torch.autocast("cpu", dtype=torch.bfloat16)
        else:
            ctx = nullcontext()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # The trainer calls the criterion inside its own autocast (CUDA AMP); the teacher's precision is its own.
        outer = torch.autocast(images.device.type, enabled=False)
        with self.tap if self.feats else nullcontext(), outer, ctx:
            out = self.model(images)
            feats = self.tap.pop() if self.feats else []
        raw = out[1] if isinstance(out, tuple) else out
        if "scores" not in raw:  # end-to-end heads: the dense one2many branch, unless fusion removed it
            raw = raw.get("one2many") or raw["one2one"]
        return {
            "boxes": raw["boxes"].float(),
            "scores": raw["scores"].float(),
            "feats": [f.float() for f in feats],
            "pred": out[0] if isinstance(out, tuple) else None,  # decoded (B, 4+C, A), only pseudo-labels read it
        }

    @torch.no_grad()
    def predictions(self, images: torch.Tensor) -> torch.Tensor:
        """The decoded dense predictions, in the precision the student is validated in during training.

        That is fp32 on the CPU (no bf16 autocast here: it decodes boxes a few pixels off, which costs mAP at high
        IoU thresholds) and, for an fp16 CUDA teacher, fp16, as the student is validated under AMP.

        Args:
            images: The preprocessed batch (B, 3, H, W).

        Returns:
            (B, 4 + C, A) in fp32: xywh boxes in pixels, then class scores.
        """
        images = images.half() if self.dtype == torch.float16 else images.float()
        with torch.autocast(images.device.type, enabled=False):
            out = self.model(images)
        return (out[0] if isinstance(out, tuple) else out).float()

    def head_outputs(self, maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The teacher's Detect head run on other maps (cross-head KD: the student's, through connectors).

        Unlike ``forward``, autograd runs: the head's parameters are frozen, so the gradient flows only into ``maps``.
        It computes in fp32 (an fp16 CUDA teacher uses its fp32 copy of the head), or under bf16 autocast on CPUs
        with native bf16 (bf16 has fp32's range); the outputs come back in fp32.

        Args:
            maps: One map per level, with the channels the teacher's head expects.

        Returns:
            ``{"boxes": (B, 4*R, A), "scores": (B, C, A)}`` in fp32.
        """
        head = self.cross_head if self.cross_head is not None else find_detect_head(self.model)
        # the maps come in the trainer's autocast precision (fp16/bf16 under AMP): give the head its weights' dtype
        maps = [m.to(next(head.parameters()).dtype) for m in maps]
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.dtype == torch.bfloat16 else nullcontext()
        with torch.autocast(maps[0].device.type, enabled=False), ctx:
            out = detect_head_outputs(head, maps)
        return {k: v.float() for k, v in out.items()}

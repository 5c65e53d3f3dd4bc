"""yolo-kd: knowledge distillation for Ultralytics YOLO detectors."""

import os

# Ultralytics probes the network at import unless told it is offline; yolo-kd never needs the network.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # no pip install behind the user's back

from .config import KDConfig, KDConfigError, load_kd_config  # noqa: E402
from .trainer import KDDetectionTrainer  # noqa: E402

__version__ = "0.1.0"
__all__ = ["KDConfig", "KDConfigError", "KDDetectionTrainer", "load_kd_config", "__version__"]

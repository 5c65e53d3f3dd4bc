"""yolo-kd: knowledge distillation for Ultralytics YOLO detectors.

Importing the library changes nothing in the process: no environment variable is set and Ultralytics is not imported
until ``KDDetectionTrainer`` is first used, so Ultralytics behaves exactly as the caller configured it. The ``yolo-kd``
command line is what turns Ultralytics' network probe and auto-install off (see ``yolo_kd.cli.configure_ultralytics``).
"""

from __future__ import annotations

from typing import Any

from .config import KDConfig, KDConfigError, load_kd_config

__version__ = "0.1.0"
__all__ = ["KDConfig", "KDConfigError", "KDDetectionTrainer", "load_kd_config", "__version__"]


def __getattr__(name: str) -> Any:
    """Import the trainer (and with it Ultralytics) on first use, so ``import yolo_kd.cli`` can configure it first.

    Args:
        name: The attribute asked for.

    Returns:
        ``KDDetectionTrainer`` when asked for it.
    """
    if name == "KDDetectionTrainer":
        from .trainer import KDDetectionTrainer

        return KDDetectionTrainer
    raise AttributeError(f"module 'yolo_kd' has no attribute {name!r}")

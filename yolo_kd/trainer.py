"""``KDDetectionTrainer``: Ultralytics' DetectionTrainer with a frozen teacher and distillation terms.

The trainer only adapts: each override below hands off to a plain function or small class elsewhere
(docs/ARCHITECTURE.md walks through one training step). Overrides keep Ultralytics' signatures, whose arguments
``DetectionTrainer`` documents; their docstrings say only what yolo-kd adds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG, RANK
from ultralytics.utils.torch_utils import unwrap_model

from . import checkpoint, compat, report
from .classes import name_list
from .config import kd_keys
from .criterion import KDParts, attach_kd_loss, build_kd, kd_loss_of
from .distiller import add_connector_group, clip_connector_gradients
from .inherit import init_student
from .lead import LeadGate, measure_lead
from .mixing import sample_mixing, unlabeled_training_list
from .settings import record_in_args, settle

__all__ = ["KDDetectionTrainer"]


class KDDetectionTrainer(DetectionTrainer):
    """DetectionTrainer that distils a frozen teacher into the student.

    Takes every Ultralytics train argument plus ``teacher=PATH``, ``kd=PRESET_OR_YAML`` and any ``kd_*`` key of
    ``KDConfig``; those are removed before Ultralytics parses the rest, so Ultralytics' own keys pass untouched.
    Bad KD input raises ``KDConfigError`` before the run folder is created.

    With ``quantize=8`` the student trains with INT8 fake quantization; the teacher stays fp32 (qat.py).

    Attributes:
        kd_cfg (KDConfig): The run's KD settings (from the arguments, or from the checkpoint on resume).
        teacher_path (str): The teacher checkpoint's absolute path.
        teacher_sha256 (str): Its hash, recorded so a resume can tell the file has changed.
        kd (KDParts | None): The frozen teacher, the distiller (connectors and KD losses) and the class map, from
            ``setup_model`` until training ends.
        class_pairs (list[tuple[int, int]]): (student class, teacher class) pairs, kept after training.
        unlabeled_files (set[str]): The unlabeled images mixed into the training set (``unlabeled=``).
        student_init (str): How the student started, in words (set by ``get_model``).

    Example:
        >>> from ultralytics import YOLO
        >>> YOLO("yolov8n.yaml").train(trainer=KDDetectionTrainer, data="data.yaml", teacher="teacher.pt", epochs=100)
    """

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict[str, Any] | None = None, _callbacks: Any = None) -> None:
        """Settle the KD settings (from a resumed checkpoint or from the KD keys given), then Ultralytics' init."""
        overrides = dict(overrides or {})
        settings = settle(overrides)  # takes the KD keys out of overrides
        self.kd_cfg, self.teacher_path = settings.cfg, settings.teacher_path
        self.teacher_sha256, self._resume_state = settings.teacher_sha256, settings.state
        self._teacher_model = settings.teacher_model
        self.kd: KDParts | None = None
        self.class_pairs: list[tuple[int, int]] = []
        self.unlabeled_files: set[str] = set()
        self.student_init = "an unknown init"  # set by get_model (under DDP it runs in the workers only)
        self._lead = LeadGate(None, self.kd_cfg.kd_lead)  # measured in _setup_train when kd_lead is on
        super().__init__(cfg, overrides, _callbacks)
        compat.add_callbacks_once(
            self,
            {
                "on_train_epoch_start": KDDetectionTrainer._set_kd_epoch,
                "on_train_epoch_end": KDDetectionTrainer._report_dropped_kd,
            },
        )
        self.world_size = compat.torchrun_world_size(self.world_size)
        record_in_args(self.args, settings, self.save_dir, write=RANK in {-1, 0})

    def get_validator(self) -> DetectionValidator:
        """Ultralytics' validator; it re-parses args with get_cfg, which must not see the KD keys."""
        with compat.args_without(self.args, kd_keys()):
            return super().get_validator()

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> DetectionModel:
        """Ultralytics' student; one built without weights starts from the teacher's (``kd_init``, see inherit.py)."""
        model = super().get_model(cfg, weights, verbose)
        if weights is not None:
            self.student_init = "its own weights"
        else:
            self.student_init = init_student(model, self._teacher_model, name_list(self.data["names"]), self.kd_cfg)
        return model

    def setup_model(self) -> dict[str, Any] | None:
        """Build the student as Ultralytics does, then the frozen teacher and the distiller beside it."""
        ckpt = super().setup_model()
        if self.kd is None:
            self.kd = build_kd(
                unwrap_model(self.model),
                self._teacher_model,
                name_list(self.data["names"]),
                self.kd_cfg,
                self.device,
                self.teacher_path,
                # under QAT the teacher is the fp32 reference the quantized student learns to match
                teacher_amp=self.kd_cfg.kd_teacher_amp and self.args.quantize != 8,
                distributed=compat.in_process_group(self.world_size),
                resume_state=self._resume_state,
            )
            self.class_pairs = self.kd.class_pairs
            self._teacher_model = None  # FrozenTeacher fused it in place: no unfused teacher is left to select from
        return ckpt

    def build_optimizer(
        self,
        model: nn.Module,
        name: str = "auto",
        lr: float = 0.001,
        momentum: float = 0.9,
        decay: float = 1e-5,
        iterations: float = 1e5,
    ) -> torch.optim.Optimizer:
        """Ultralytics' optimizer plus one group for the connectors (no weight decay), scheduled like the rest."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        add_connector_group(optimizer, self.kd.distiller if self.kd is not None else None, self.args.lr0)
        return optimizer

    def _setup_train(self) -> None:
        """Ultralytics' setup (AMP check kept offline), then the KD criterion on the student.

        The criterion is set after Ultralytics has made its EMA copy of the student here, so that copy, the
        validation model and every checkpoint derived from it never hold the teacher.
        """
        with compat.amp_check_offline():
            super()._setup_train()
        attach_kd_loss(unwrap_model(self.model), self.kd, self.kd_cfg, self.unlabeled_files)
        if self.kd_cfg.kd_lead > 0:  # the teacher's score on the student's validation set, once (see lead.py)
            names = dict(enumerate(name_list(self.data["names"])))
            args = (self.kd.teacher, self.get_validator(), self.data, self.class_pairs, names, self.kd_cfg.kd_lead)
            self._lead = measure_lead(*args, validates=bool(self.args.val))

    def preprocess_batch(self, batch: dict) -> dict:
        """Ultralytics' preprocessing, then the teacher's pass on the final images (see ``KDLoss.prefetch``)."""
        batch = super().preprocess_batch(batch)
        criterion = kd_loss_of(unwrap_model(self.model))
        if criterion is not None:
            criterion.prefetch(batch["img"])
        return batch

    def build_dataset(self, img_path: Any, mode: str = "train", batch: int | None = None) -> Dataset:
        """Ultralytics' dataset; with ``unlabeled=``, training reads a list mixing in the unlabeled images."""
        if mode == "train" and self.kd_cfg.unlabeled:
            mixed, self.unlabeled_files = unlabeled_training_list(
                img_path, self.kd_cfg, self.args, self.epochs, self.save_dir, self.data.get("val")
            )
            with compat.label_cache_at(mixed.with_suffix(".cache")):  # not the dataset's own cache
                return super().build_dataset(str(mixed), mode, batch)
        return super().build_dataset(img_path, mode, batch)

    def _set_kd_epoch(self) -> None:
        """Callback at each epoch's start: the one place the KD criterion learns the epoch and the teacher's lead."""
        criterion = kd_loss_of(unwrap_model(self.model))
        if criterion is not None:
            mixing = bool(sample_mixing(self.args, self.epoch, self.epochs))
            distributed = compat.in_process_group(self.world_size)
            lead = self._lead.epoch_share(self.epoch, self.best_fitness, self.device, distributed)
            criterion.set_epoch(self.epoch, self.epochs, mixing, lead)

    def _report_dropped_kd(self) -> None:
        """Callback at each epoch's end: warn about steps whose KD terms were dropped as non-finite."""
        criterion = kd_loss_of(unwrap_model(self.model))
        if criterion is not None:
            report.warn_dropped(self.epoch + 1, criterion.pop_dropped_steps())

    def optimizer_step(self) -> None:
        """Average the connectors' gradients over ranks (they are outside DDP) and clip them as Ultralytics clips the
        student's, then step as Ultralytics does."""
        distiller = self.kd.distiller if self.kd is not None else None
        if distiller is not None and compat.in_process_group(self.world_size):
            compat.average_gradients(distiller.parameters(), self.world_size)
        clip_connector_gradients(distiller, self.scaler)
        super().optimizer_step()

    def _handle_nan_recovery(self, epoch: int) -> bool:
        """Ultralytics restores the student and optimizer from last.pt; the connectors come back with them."""
        with compat.criterion_detached(unwrap_model(self.model)):  # its EMA is rebuilt as a deep copy of the student
            recovered = super()._handle_nan_recovery(epoch)
        if recovered and self.kd is not None:
            checkpoint.restore_connectors(self.kd.distiller, self.last)
        return recovered

    def _model_train(self) -> None:
        """Ultralytics' train mode for the student, and for the connectors (the teacher stays in eval mode)."""
        super()._model_train()
        if self.kd is not None:
            self.kd.distiller.train()

    def _do_train(self) -> None:
        """Ultralytics' training loop; afterwards nothing of the teacher is left on the student or the trainer."""
        try:
            super()._do_train()
        finally:
            if isinstance(self.model, torch.nn.Module):
                unwrap_model(self.model).criterion = None
            self.kd = None  # a YOLO object keeps its trainer: release the teacher's memory

    def save_model(self) -> bool:
        """Save as Ultralytics does, to scratch files that get the KD record and then move into place whole."""
        return checkpoint.save_whole(self, super().save_model, self._kd_record, main=RANK in {-1, 0})

    def _kd_record(self) -> dict[str, Any]:
        """The KD record each checkpoint carries; an unfinished run's holds the connectors' state for resume."""
        state = checkpoint.connector_state(self.kd.distiller) if self.kd is not None else None
        return checkpoint.kd_record(self.kd_cfg, self.teacher_path, self.teacher_sha256, state)

    def resume_training(self, ckpt: dict[str, Any] | None) -> None:
        """Resume as Ultralytics does, and drop ``results.csv`` rows of epochs the checkpoint does not hold."""
        super().resume_training(ckpt)
        if ckpt is not None and self.resume and RANK in {-1, 0} and self.csv.is_file():
            dropped = checkpoint.trim_results_csv(self.csv, self.start_epoch)
            if dropped:
                report.warn_trimmed(dropped, self.start_epoch)

    def final_eval(self) -> None:
        """Finished checkpoints cannot be resumed, so the connector state leaves ``last.pt``; then Ultralytics' eval,
        whose final rewrite of ``last.pt``/``best.pt`` goes through a scratch file (``compat.atomic_final_strip``).
        """
        if RANK in {-1, 0} and self.last.exists():
            checkpoint.drop_connector_state(self.last)
        with compat.atomic_final_strip():
            super().final_eval()

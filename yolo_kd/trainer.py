"""``KDDetectionTrainer``: Ultralytics' DetectionTrainer with a frozen teacher and distillation terms."""

from __future__ import annotations

import io
import os
from functools import partial
from pathlib import Path
from typing import Any

import torch
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.tasks import DetectionModel, load_checkpoint
from ultralytics.utils import DEFAULT_CFG, LOCAL_RANK, LOGGER, RANK, YAML, colorstr
from ultralytics.utils.torch_utils import unwrap_model

from .classes import class_pairs, is_identity, name_list
from .config import KDConfig, KDConfigError, load_kd_config, load_recorded_config
from .criterion import KDLoss, KDModules, box_kd_reason, probe_head_channels
from .dataset import image_files
from .inherit import inherit_weights
from .teacher import FrozenTeacher, file_sha256, load_teacher_model

KD_RECORD = "kd"  # checkpoint key holding yolo-kd's plain-data record (config, teacher, connector state)
RUN_KEYS = ("teacher", "kd")  # KD keys besides the KDConfig fields


def kd_keys() -> tuple[str, ...]:
    """Every key the KD trainer takes out of Ultralytics' overrides."""
    return (*RUN_KEYS, *KDConfig.field_names())


def read_kd_record(path: str | Path) -> dict[str, Any] | None:
    """The yolo-kd record of a checkpoint (None for a checkpoint yolo-kd did not write)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt.get(KD_RECORD) if isinstance(ckpt, dict) else None


class KDDetectionTrainer(DetectionTrainer):
    """DetectionTrainer that distils a frozen teacher into the student.

    Takes every Ultralytics train argument plus ``teacher=PATH``, ``kd=PRESET_OR_YAML`` and any ``kd_*`` key of
    ``KDConfig``; those are removed before Ultralytics parses the rest, so Ultralytics' own keys pass untouched.
    Bad KD input raises ``KDConfigError`` before the run folder is created.

    Example:
        >>> from ultralytics import YOLO
        >>> YOLO("yolov8n.yaml").train(trainer=KDDetectionTrainer, data="data.yaml", teacher="teacher.pt", epochs=100)
    """

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict[str, Any] | None = None, _callbacks: Any = None):
        overrides = dict(overrides or {})
        kd_args = {k: overrides.pop(k) for k in list(overrides) if k in kd_keys()}
        unknown = sorted(k for k in overrides if k.startswith("kd_"))
        if unknown:
            raise KDConfigError(f"unknown KD key(s) {unknown}; valid keys: {list(kd_keys())}")
        record = self._resume_record(overrides.get("resume"))
        ignored = sorted(k for k in kd_args if k != "teacher")
        if record is not None and ignored:
            LOGGER.warning(f"{colorstr('yolo-kd:')} resume ignores {ignored}: KD settings come from the checkpoint")
        if record is not None:  # resume: the KD settings and teacher come from the checkpoint
            self.kd_cfg = load_recorded_config(record["config"])
            teacher = kd_args.get("teacher") or record["teacher"]
            self.teacher_sha256 = file_sha256(teacher) if Path(teacher).is_file() else None
            recorded = record.get("teacher_sha256")
            if recorded is not None and self.teacher_sha256 is not None and self.teacher_sha256 != recorded:
                raise KDConfigError(
                    f"teacher={teacher} is not the teacher this run was trained with (file hash differs)"
                )
        else:
            self.kd_cfg = load_kd_config(
                kd_args.pop("kd", None), **{k: v for k, v in kd_args.items() if k != "teacher"}
            )
            teacher = kd_args.get("teacher")
        self.teacher_path = str(Path(teacher).resolve()) if teacher else teacher
        self._teacher_model = load_teacher_model(teacher)
        if record is None:
            self.teacher_sha256 = file_sha256(teacher)
            self._check_pair(overrides)
        self.teacher: FrozenTeacher | None = None
        self.student_init = "an unknown init"  # set by get_model (under DDP it runs in the workers only)
        self.class_pairs: list[tuple[int, int]] = []
        self.unlabeled_files: set[str] = set()
        self.kd_modules: KDModules | None = None
        self._resume_state = (record or {}).get("state")
        super().__init__(cfg, overrides, _callbacks)
        self.add_callback("on_train_epoch_end", KDDetectionTrainer._report_dropped_kd)
        self.add_callback("on_train_epoch_start", KDDetectionTrainer._schedule_kd)
        if LOCAL_RANK != -1 and int(os.environ.get("WORLD_SIZE", 1)) > self.world_size:
            # Launched by torchrun across nodes: Ultralytics counts only this node's devices, but the process group
            # and the per-process batch must use the global world size.
            self.world_size = int(os.environ["WORLD_SIZE"])
        # The KD settings ride along in args: Ultralytics' multi-GPU launch rebuilds this trainer in each worker from
        # vars(args) alone, and args.yaml should say how the run was made. Checkpoints get them stripped (save_model).
        for key, value in self.kd_args().items():
            setattr(self.args, key, value)
        if RANK in {-1, 0}:
            YAML.save(self.save_dir / "args.yaml", vars(self.args))

    def get_validator(self):
        """Ultralytics' validator; it re-parses args with get_cfg, which must not see the KD keys."""
        kd = {k: vars(self.args).pop(k) for k in kd_keys() if k in vars(self.args)}
        try:
            return super().get_validator()
        finally:
            vars(self.args).update(kd)

    def kd_args(self) -> dict[str, Any]:
        """Every KD key with its value for this run: the teacher path and the full, validated KD config."""
        return {"teacher": self.teacher_path, **self.kd_cfg.to_dict()}

    @staticmethod
    def _resume_record(resume: Any) -> dict[str, Any] | None:
        if not resume:
            return None
        if resume is True:  # as Ultralytics does: the most recent last.pt under runs/
            from ultralytics.utils.files import get_latest_run

            resume = get_latest_run()
        if not isinstance(resume, (str, Path)) or not Path(resume).is_file():
            raise KDConfigError(f"resume={resume}: no such checkpoint")
        ckpt = torch.load(resume, map_location="cpu", weights_only=False)
        record = ckpt.get(KD_RECORD) if isinstance(ckpt, dict) else None
        if record is None:
            # Killed between Ultralytics' write of last.pt and ours: its train_args still carry the KD settings.
            args = ckpt.get("train_args", {}) if isinstance(ckpt, dict) else {}
            if not args.get("teacher"):
                raise KDConfigError(f"resume={resume} was not written by yolo-kd (no '{KD_RECORD}' record)")
            record = {"config": {k: args[k] for k in KDConfig.field_names() if k in args}, "teacher": args["teacher"]}
            LOGGER.warning(
                f"{colorstr('yolo-kd:')} {resume} has no KD record; KD settings from its args, fresh connectors"
            )
        return record

    def _check_pair(self, overrides: dict[str, Any]) -> None:
        """Check strides and classes of teacher and student before anything is written to disk."""
        teacher = self._teacher_model
        model, data = overrides.get("model"), overrides.get("data")
        data_names = None
        if isinstance(data, (str, Path)) and str(data).endswith((".yaml", ".yml")) and Path(data).is_file():
            data_names = name_list(YAML.load(data).get("names"))
        if isinstance(model, (str, Path)) and str(model).endswith((".yaml", ".yml")):
            student_stride = DetectionModel(str(model), nc=len(data_names or [0]), verbose=False).stride
        elif isinstance(model, (str, Path)) and str(model).endswith(".pt") and Path(model).is_file():
            student_stride = load_checkpoint(model)[0].stride
        else:
            student_stride = None
        if student_stride is not None and student_stride.tolist() != teacher.stride.tolist():
            raise KDConfigError(
                f"teacher strides {teacher.stride.int().tolist()} differ from the student's "
                f"{student_stride.int().tolist()}: their head maps cannot be matched"
            )
        if data_names is not None:
            self._check_classes(name_list(teacher.names), data_names)

    def _check_classes(self, teacher_names: list[str], student_names: list[str]) -> list[tuple[int, int]]:
        """Pair student and teacher classes (by name, or by ``kd_class_map``); one clear error if none match."""
        return class_pairs(student_names, teacher_names, self.kd_cfg.kd_class_map)

    # --- model, optimizer and criterion -------------------------------------------------------------------------

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True):
        """Ultralytics' student; one built without weights starts from the teacher's (``kd_init``, see inherit.py)."""
        model = super().get_model(cfg, weights, verbose)
        if weights is not None:
            self.student_init = "its own weights"
        elif self.kd_cfg.kd_init == "random" or self._teacher_model is None:
            self.student_init = "a random init"
        else:
            pairs = self._check_classes(name_list(self._teacher_model.names), name_list(self.data["names"]))
            reason = inherit_weights(model, self._teacher_model, pairs)
            self.student_init = "the teacher's weights" if reason is None else "a random init"
            if RANK in {-1, 0}:
                if reason is None:
                    LOGGER.info(f"{colorstr('yolo-kd:')} kd_init=teacher: student starts from the teacher's weights")
                else:
                    LOGGER.warning(f"{colorstr('yolo-kd:')} kd_init=teacher not applied, random init: {reason}")
        return model

    def setup_model(self):
        """Build the student as Ultralytics does, then the frozen teacher and the KD connectors beside it."""
        ckpt = super().setup_model()
        student = unwrap_model(self.model)
        if self.teacher is None:
            t_names, s_names = name_list(self._teacher_model.names), name_list(self.data["names"])
            self.class_pairs = self._check_classes(t_names, s_names)
            if not is_identity(self.class_pairs, len(s_names), len(t_names)) and RANK in {-1, 0}:
                shown = ", ".join(f"{s_names[s]}<-{t_names[t]}" for s, t in self.class_pairs)
                missing = [s_names[i] for i in range(len(s_names)) if i not in {s for s, _ in self.class_pairs}]
                LOGGER.info(f"{colorstr('yolo-kd:')} class map (student<-teacher): {shown}")
                if missing:
                    LOGGER.warning(f"{colorstr('yolo-kd:')} no teacher class for {missing}: no logit KD for them")
            self.teacher = FrozenTeacher(
                self._teacher_model, self.device, amp=self.kd_cfg.kd_teacher_amp, feats=self.kd_cfg.kd_feat > 0
            )
            self._teacher_model = None  # the fused copy inside FrozenTeacher is the only one kept
            s_ch = probe_head_channels(student)
            t_ch = probe_head_channels(self.teacher.model)
            self.kd_modules = KDModules(s_ch, t_ch, self.kd_cfg).to(self.device)
            if self._resume_state:
                self.kd_modules.load_state_dict(self._resume_state)
            self._log_setup(student, s_ch, t_ch)
        return ckpt

    def _log_setup(self, student: torch.nn.Module, s_ch: list[int], t_ch: list[int]) -> None:
        if RANK not in {-1, 0}:
            return
        cfg = self.kd_cfg
        reason = box_kd_reason(cfg, student.model[-1].reg_max, self.teacher)
        prefix = colorstr("yolo-kd:")
        LOGGER.info(f"{prefix} teacher {self.teacher_path} ({self.teacher.dtype or torch.float32} on {self.device})")
        LOGGER.info(
            f"{prefix} kd_cls={cfg.kd_cls} (T={cfg.kd_cls_temp}), kd_box={cfg.kd_box} (T={cfg.kd_box_temp}), "
            f"kd_feat={cfg.kd_feat} ({cfg.kd_feat_loss}, student {s_ch} -> teacher {t_ch} channels), "
            f"kd_assign={cfg.kd_assign} (teacher's share in label assignment)"
        )
        if reason is not None and cfg.kd_box > 0:
            LOGGER.warning(f"{prefix} box-distribution KD is off: {reason}")

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Ultralytics' optimizer plus one group for the KD connectors (no weight decay), scheduled like the rest."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        params = [p for p in self.kd_modules.parameters() if p.requires_grad] if self.kd_modules is not None else []
        if params:
            base = {k: v for k, v in optimizer.param_groups[0].items() if k not in {"params", "param_group"}}
            # lr0, not group 0's lr: MuSGD boosts some groups (3x lr), which the connectors must not inherit
            group = {**base, "params": params, "weight_decay": 0.0, "param_group": "kd", "lr": self.args.lr0}
            optimizer.add_param_group(group)
        return optimizer

    def _setup_train(self):
        # Ultralytics' AMP check (CUDA only) downloads yolo26n.pt when it is not on disk. yolo-kd downloads nothing,
        # so without those weights the check is skipped (AMP stays on, as Ultralytics does when offline).
        import ultralytics.engine.trainer as engine

        check_amp = engine.check_amp
        engine.check_amp = partial(_check_amp_offline, check_amp)
        try:
            super()._setup_train()
        finally:
            engine.check_amp = check_amp
        model = unwrap_model(self.model)
        base = getattr(model, "criterion", None) or model.init_criterion()
        model.criterion = KDLoss(
            base,
            self.teacher,
            self.kd_modules,
            self.kd_cfg,
            model.model[-1].reg_max,
            self._class_pairs_or_none(),
            self.unlabeled_files,
        )
        # A mixed sample may hide unlabelled tiles under a labelled lead image (see build_dataset); closing mosaic
        # turns this off again (_close_dataloader_mosaic).
        model.criterion.pseudo_every_sample = bool(self.kd_cfg.unlabeled and self._mixing())

    def preprocess_batch(self, batch: dict) -> dict:
        """Ultralytics' preprocessing, then the teacher's pass on the final images (see ``KDLoss.prefetch``)."""
        batch = super().preprocess_batch(batch)
        criterion = self._kd_loss()
        if criterion is not None:
            criterion.prefetch(batch["img"])
        return batch

    def build_dataset(self, img_path: Any, mode: str = "train", batch: int | None = None):
        """Ultralytics' dataset; with ``unlabeled=``, the training set mixes in the unlabelled images.

        The mix is an image list (one path a line, repeats allowed) written to the run folder: every labelled image
        once, and unlabelled images cycled until they make up ``unlabeled_ratio`` of the list, so an epoch's batches
        hold that share on average and go through the very same augmentation pipeline.
        """
        if mode == "train" and self.kd_cfg.unlabeled:
            img_path = str(self._mixed_image_list(img_path))
            mixing = self._mixing()
            # A mixed sample keeps only its lead image's file name, so an unlabelled tile under a labelled lead cannot
            # be told apart and would train as empty background. While mixing is on, every sample gets the teacher's
            # uncovered confident boxes; once Ultralytics closes mosaic, only unlabelled images do.
            if mixing and RANK in {-1, 0}:
                LOGGER.info(
                    f"{colorstr('yolo-kd:')} unlabeled= with {mixing}: teacher pseudo-labels go on every training "
                    "sample while mixing is on (a mixed sample may hold unlabelled tiles)"
                )
        return super().build_dataset(img_path, mode, batch)

    def _kd_loss(self) -> KDLoss | None:
        """The live student's KD criterion, once ``_setup_train`` has built it (None before and after training)."""
        criterion = getattr(unwrap_model(self.model), "criterion", None)
        return criterion if isinstance(criterion, KDLoss) else None

    def _mixing(self) -> list[str]:
        """The sample-mixing augmentations switched on in this run's arguments."""
        return sorted(k for k in ("mosaic", "mixup", "cutmix") if getattr(self.args, k, 0))

    def _close_dataloader_mosaic(self) -> None:
        """Ultralytics turns mixing off for the last epochs; from then on only unlabelled images get pseudo-labels."""
        super()._close_dataloader_mosaic()
        criterion = self._kd_loss()
        if criterion is not None:
            criterion.pseudo_every_sample = False

    def _mixed_image_list(self, img_path: Any) -> Path:
        labelled: list[str] = []
        for p in img_path if isinstance(img_path, list) else [img_path]:
            p = Path(p)
            if p.is_dir():
                labelled += [str(f.resolve()) for f in image_files(p)]
            else:  # an image list file
                base = p.parent
                for line in p.read_text().splitlines():
                    line = line.strip()
                    labelled.append(str(base / line[2:]) if line.startswith("./") else line)
        unlabelled = [str(f) for f in image_files(self.kd_cfg.unlabeled)]
        ratio = self.kd_cfg.unlabeled_ratio
        n_unlabelled = max(1, round(len(labelled) * ratio / (1 - ratio)))
        order = torch.randperm(len(unlabelled), generator=torch.Generator().manual_seed(self.args.seed)).tolist()
        picked = [unlabelled[order[i % len(unlabelled)]] for i in range(n_unlabelled)]
        self.unlabeled_files = set(unlabelled)
        path = self.save_dir / "train_with_unlabeled.txt"
        tmp = path.with_suffix(f".{RANK}.tmp")  # DDP ranks build it too: each writes whole, then renames
        tmp.write_text("\n".join(labelled + picked) + "\n")
        os.replace(tmp, path)
        if RANK in {-1, 0}:
            LOGGER.info(
                f"{colorstr('yolo-kd:')} training on {len(labelled)} labelled + {n_unlabelled} unlabelled image slots "
                f"({len(unlabelled)} unlabelled images, unlabeled_ratio={ratio}); list: {path}"
            )
        return path

    def _class_pairs_or_none(self) -> list[tuple[int, int]] | None:
        n_student, n_teacher = len(name_list(self.data["names"])), self.teacher.nc
        return None if is_identity(self.class_pairs, n_student, n_teacher) else self.class_pairs

    def optimizer_step(self):
        """Average the connectors' gradients over ranks, then step as Ultralytics does.

        Only the student is wrapped in DistributedDataParallel (the teacher must not be, and the connectors are not
        part of the student), so the connectors' gradients are all-reduced here, as DDP does for the student's.
        """
        if self.world_size > 1 and self.kd_modules is not None and torch.distributed.is_initialized():
            average_gradients(self.kd_modules.parameters(), self.world_size)
        super().optimizer_step()

    def _handle_nan_recovery(self, epoch):
        """Ultralytics restores the student and optimizer from last.pt; the connectors come back with them."""
        recovered = super()._handle_nan_recovery(epoch)
        if recovered and self.kd_modules is not None:
            record = read_kd_record(self.last) or {}
            if record.get("state"):
                self.kd_modules.load_state_dict(record["state"])
        return recovered

    def _schedule_kd(self) -> None:
        """This epoch's share of the KD gains: 1 at the first epoch, ``kd_final`` at the last, linear in between."""
        criterion = self._kd_loss()
        if criterion is not None:
            progress = self.epoch / max(self.epochs - 1, 1)
            criterion.schedule = 1.0 + (self.kd_cfg.kd_final - 1.0) * progress

    def _report_dropped_kd(self) -> None:
        criterion = self._kd_loss()
        if criterion is not None:
            dropped = criterion.pop_dropped_steps()
            if dropped and RANK in {-1, 0}:
                LOGGER.warning(
                    f"{colorstr('yolo-kd:')} epoch {self.epoch + 1}: KD dropped on {dropped} step(s) with a non-finite "
                    "teacher output or KD term; the detection loss trained as usual on them"
                )

    def _model_train(self):
        super()._model_train()
        if self.kd_modules is not None:
            self.kd_modules.train()

    def _do_train(self):
        try:
            super()._do_train()
        finally:
            # Drop the KD criterion from the live student so nothing of the teacher outlives training through it.
            if isinstance(self.model, torch.nn.Module):
                unwrap_model(self.model).criterion = None
            self.teacher = self.kd_modules = None  # a YOLO object keeps its trainer: release the teacher's memory

    # --- checkpoints -----------------------------------------------------------------------------------------------

    def kd_record(self, with_state: bool) -> dict[str, Any]:
        """Plain data that resume needs: KD config, teacher path and hash, and (optionally) the connector state."""
        record: dict[str, Any] = {
            "format": "yolo-kd/1",
            "config": self.kd_cfg.to_dict(),
            "teacher": self.teacher_path,
            "teacher_sha256": self.teacher_sha256,
        }
        if with_state and self.kd_modules is not None:
            record["state"] = {k: v.detach().float().cpu().clone() for k, v in self.kd_modules.state_dict().items()}
        return record

    def save_model(self):
        """Save as Ultralytics does, then add the KD record (connector state only in ``last.pt``, for resume).

        Ultralytics writes its checkpoint files in place, so a kill in mid-write would leave a truncated ``last.pt``.
        Here it writes to ``*.partial`` files instead; each is completed with the KD record and moved into place
        atomically, so ``last.pt`` and ``best.pt`` are always whole checkpoints of some finished epoch.
        """
        last, best = self.last, self.best
        partial_last, partial_best = (p.with_name(f"{p.name}.partial") for p in (last, best))
        for p in (partial_last, partial_best):
            p.unlink(missing_ok=True)
        self.last, self.best = partial_last, partial_best
        try:
            saved = super().save_model()
        finally:
            self.last, self.best = last, best
        if saved and RANK in {-1, 0}:
            ckpt = torch.load(partial_last, map_location="cpu", weights_only=False)
            # train_args stay pure Ultralytics, so plain YOLO(path) and resume parse them; KD lives in the record
            ckpt["train_args"] = {k: v for k, v in ckpt["train_args"].items() if k not in kd_keys()}
            ckpt[KD_RECORD] = self.kd_record(with_state=True)
            _atomic_save(ckpt, last)
            if self.save_period > 0 and self.epoch % self.save_period == 0:
                _atomic_save(ckpt, self.wdir / f"epoch{self.epoch}.pt")
            if partial_best.exists():  # Ultralytics found a new best this epoch
                ckpt[KD_RECORD] = self.kd_record(with_state=False)
                _atomic_save(ckpt, best)
        for p in (partial_last, partial_best):
            p.unlink(missing_ok=True)
        return saved

    def resume_training(self, ckpt: dict[str, Any] | None) -> None:
        """Resume as Ultralytics does, and drop ``results.csv`` rows of epochs the checkpoint does not hold.

        Ultralytics appends an epoch's row before it saves the checkpoint; a kill between the two would otherwise
        leave that epoch twice in ``results.csv`` once it is trained again.
        """
        super().resume_training(ckpt)
        if ckpt is None or not self.resume or RANK not in {-1, 0} or not self.csv.is_file():
            return
        lines = self.csv.read_text().splitlines(keepends=True)
        kept = lines[:1] + [ln for ln in lines[1:] if ln.strip() and float(ln.split(",")[0]) <= self.start_epoch]
        if len(kept) < len(lines):
            LOGGER.warning(
                f"{colorstr('yolo-kd:')} results.csv had {len(lines) - len(kept)} row(s) past the checkpoint's epoch "
                f"{self.start_epoch}; dropped, they are trained again"
            )
            tmp = self.csv.with_suffix(".csv.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, self.csv)

    def final_eval(self):
        """Finished checkpoints cannot be resumed, so the connector state leaves ``last.pt`` too."""
        if RANK in {-1, 0} and self.last.exists():
            ckpt = torch.load(self.last, map_location="cpu", weights_only=False)
            if isinstance(ckpt.get(KD_RECORD), dict) and ckpt[KD_RECORD].pop("state", None) is not None:
                _atomic_save(ckpt, self.last)
        return super().final_eval()


def _check_amp_offline(check_amp: Any, model: torch.nn.Module) -> bool:
    """Ultralytics' AMP check when its reference weights are on disk; otherwise skip it instead of downloading."""
    from ultralytics.utils import WEIGHTS_DIR

    if next(model.parameters()).device.type == "cuda" and not (WEIGHTS_DIR / "yolo26n.pt").is_file():
        LOGGER.warning(f"{colorstr('yolo-kd:')} AMP check skipped: {WEIGHTS_DIR / 'yolo26n.pt'} is not on disk")
        return True
    return check_amp(model)


def average_gradients(params: Any, world_size: int) -> None:
    """All-reduce the gradients of ``params`` to their mean over ranks, in one flat collective."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]) / world_size
    torch.distributed.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    """Write a checkpoint through a temporary file and a rename, so a kill never leaves a half-written file."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = Path(f"{path}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)

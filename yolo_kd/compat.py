"""Every touch of Ultralytics that is not a trainer override, so an Ultralytics upgrade is reviewed in this file.

Each patch is a context manager scoped to the one call that needs it, or a plain function; nothing stays patched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from ultralytics.utils import LOCAL_RANK, LOGGER, RANK, colorstr

from .assign import TeacherGuidedAssigner

# Ultralytics' list of GPUs whose AMP training is broken (checks.check_amp), where its check refuses AMP at once
AMP_BROKEN_GPUS = re.compile(
    r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)", re.IGNORECASE
)


def _check_amp_offline(check_amp: Any, model: torch.nn.Module) -> bool:
    """Ultralytics' AMP check when its reference weights are on disk; otherwise skip it instead of downloading.

    Args:
        check_amp: Ultralytics' ``check_amp``.
        model: The model it checks.

    Returns:
        Whether AMP stays on.
    """
    from ultralytics.utils import WEIGHTS_DIR

    device = next(model.parameters()).device
    if device.type == "cuda" and not (WEIGHTS_DIR / "yolo26n.pt").is_file():
        if AMP_BROKEN_GPUS.search(torch.cuda.get_device_name(device)):
            return check_amp(model)  # Ultralytics turns AMP off on these GPUs before it would download anything
        LOGGER.warning(f"{colorstr('yolo-kd:')} AMP check skipped: {WEIGHTS_DIR / 'yolo26n.pt'} is not on disk")
        return True
    return check_amp(model)


@contextmanager
def amp_check_offline() -> Iterator[None]:
    """Inside the block, Ultralytics' trainer runs its AMP check only when it need not download.

    Ultralytics' AMP check (CUDA only) downloads yolo26n.pt when it is not on disk. yolo-kd downloads nothing, so
    without those weights the check is skipped: AMP stays on, as Ultralytics leaves it when it cannot download,
    except on the GPUs Ultralytics refuses AMP on by name (``AMP_BROKEN_GPUS``), where its own check runs.
    """
    import ultralytics.engine.trainer as engine

    check_amp = engine.check_amp
    engine.check_amp = partial(_check_amp_offline, check_amp)
    try:
        yield
    finally:
        engine.check_amp = check_amp


@contextmanager
def label_cache_at(path: Path) -> Iterator[None]:
    """Inside the block, Ultralytics' YOLO datasets keep their label cache in ``path`` instead of beside the labels.

    Ultralytics names the cache after the first image's label folder (``labels/train.cache``) and replaces it when
    the image list's hash differs. A training list that mixes unlabeled images into the labeled split has its own
    hash, so without this the run would overwrite the dataset's cache, a file it did not create, with its own.

    Args:
        path: The cache file to use instead (in the run's folder).
    """
    from ultralytics.data.dataset import YOLODataset

    own = YOLODataset._load_or_scan_cache

    def redirected(dataset: YOLODataset, cache_path: Path, cache_hash: str) -> tuple[dict, bool]:
        return own(dataset, path, cache_hash)

    YOLODataset._load_or_scan_cache = redirected
    try:
        yield
    finally:
        YOLODataset._load_or_scan_cache = own


@contextmanager
def args_without(args: Any, keys: Iterable[str]) -> Iterator[None]:
    """Take ``keys`` out of an Ultralytics args namespace for the block, and put them back after it.

    Ultralytics' validator re-parses the trainer's args with ``get_cfg``, which refuses keys it does not know, while
    the KD keys must ride along in the trainer's args for its DDP workers (see the trainer's ``__init__``).

    Args:
        args: The trainer's ``args`` namespace.
        keys: The keys to hide.
    """
    hidden = {k: vars(args).pop(k) for k in keys if k in vars(args)}
    try:
        yield
    finally:
        vars(args).update(hidden)


def add_callbacks_once(trainer: Any, callbacks: dict[str, Callable[[Any], None]]) -> None:
    """Register callbacks on an Ultralytics trainer, each once.

    Ultralytics' multi-GPU launch builds each worker's trainer with the parent's callbacks, which already hold these;
    adding them again would run each twice per event.

    Args:
        trainer: The trainer (``add_callback``, ``callbacks``).
        callbacks: Event name -> callback.
    """
    for event, callback in callbacks.items():
        if callback not in trainer.callbacks[event]:
            trainer.add_callback(event, callback)


def torchrun_world_size(world_size: int) -> int:
    """The world size a process group must use: Ultralytics counts only this node's devices.

    Args:
        world_size: Ultralytics' count.

    Returns:
        torchrun's ``WORLD_SIZE`` when this process was launched by it across nodes (larger), else ``world_size``.
    """
    if LOCAL_RANK != -1 and int(os.environ.get("WORLD_SIZE", 1)) > world_size:
        return int(os.environ["WORLD_SIZE"])
    return world_size


def in_process_group(world_size: int) -> bool:
    """Whether this rank trains in a process group (DDP), where rank-local KD state must be shared.

    Args:
        world_size: The trainer's world size.

    Returns:
        True under DDP once the group is initialised.
    """
    return world_size > 1 and torch.distributed.is_initialized()


def average_gradients(params: Iterable[torch.nn.Parameter], world_size: int) -> None:
    """All-reduce the gradients of ``params`` to their mean over ranks, in one flat collective.

    Only the student is wrapped in DistributedDataParallel (the teacher must not be, and the connectors are not part
    of the student), so the connectors' gradients are averaged here, as DDP does for the student's.

    Args:
        params: Parameters whose ``.grad`` is averaged in place (those without a gradient are skipped).
        world_size: Number of ranks.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]) / world_size
    torch.distributed.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_from_rank0(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers of ``module`` (the connectors, which are outside DDP).

    Ultralytics seeds each rank differently, so connectors built on each rank start different; DDP broadcasts the
    student's weights when it wraps it, and this does the same for the connectors.

    Args:
        module: Built on every rank with the same structure.
    """
    for tensor in module.state_dict().values():
        torch.distributed.broadcast(tensor, src=0)


@torch.no_grad()
def validation_fitness(
    validator: Any,
    predict: Callable[[torch.Tensor], torch.Tensor],
    data: dict[str, Any],
    names: dict[int, str],
    device: torch.device,
) -> float | None:
    """Ultralytics' training-time validation of the predictions ``predict`` makes, and their fitness.

    Runs the validator's own steps over its loader (preprocess, NMS, matching, metrics, and under DDP the gather of
    every rank's shard to rank 0), as ``BaseValidator.__call__`` does inside a training run, but on any model's
    decoded predictions; nothing is written (no plots, no JSON, no labels).

    Args:
        validator: A fresh ``DetectionValidator`` with its dataloader.
        predict: Preprocessed images (B, 3, H, W) -> decoded predictions (B, 4 + len(names), A).
        data: The run's dataset dictionary.
        names: Class names by index, the classes the predictions score.
        device: Where the images go.

    Returns:
        The fitness (mAP50-95 for detection) on rank 0 or a single process; None on other DDP ranks.
    """
    validator.args.plots = validator.args.save_json = validator.args.save_txt = False
    # fp32 images whatever the run's half=/quantize=16 asked, as Ultralytics' own validation inside training resets
    # it on the CPU; ``predict`` casts them to its model's precision (an fp16 CUDA teacher)
    validator.args.quantize = None
    validator.training = True  # as inside a training run: no dataset checks, metrics computed as for the student
    validator.device, validator.data = device, data
    validator.init_metrics(SimpleNamespace(names=names, end2end=False))
    for batch in validator.dataloader:
        batch = validator.preprocess(batch)
        validator.update_metrics(validator.postprocess(predict(batch["img"])), batch)
    validator.gather_stats()  # a no-op in one process
    if RANK not in {-1, 0}:
        return None
    validator.get_stats()
    return float(validator.metrics.fitness)


def broadcast_float(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (a number only rank 0 can compute, such as one read off its validation).

    Args:
        value: This rank's value (ignored on ranks other than 0).
        device: This rank's device (NCCL broadcasts CUDA tensors).

    Returns:
        Rank 0's value.
    """
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.broadcast(t, src=0)
    return float(t.item())


@contextmanager
def guided_assignment(
    loss: Any, teacher: tuple[torch.Tensor, torch.Tensor], share: float | torch.Tensor
) -> Iterator[TeacherGuidedAssigner]:
    """Let a detection loss assign from the teacher-student blend inside the block; its own assigner is back after.

    The detection loss reads ``loss.assigner`` deep inside its call, so the only way in is to stand in for it; the
    block holds exactly one call of the detection loss, so no teacher tensor outlives it.

    Args:
        loss: A detection loss with a task-aligned ``assigner`` (see ``assign.dense_loss``).
        teacher: The teacher's decoded predictions, see ``assign.teacher_predictions``.
        share: Weight of the teacher's predictions in [0, 1].

    Yields:
        The stand-in assigner.
    """
    own = loss.assigner
    loss.assigner = guided = TeacherGuidedAssigner(own, share, teacher)
    try:
        yield guided
    finally:
        loss.assigner = own


@contextmanager
def criterion_detached(model: torch.nn.Module) -> Iterator[None]:
    """Take the KD criterion off the student for the block, and put it back after it.

    Ultralytics' NaN recovery rebuilds its EMA as a deep copy of the live student; without this, that copy would
    carry the KD criterion (teacher and connectors included) into the EMA, its validation and its checkpoints.

    Args:
        model: The (unwrapped) student.
    """
    criterion, model.criterion = getattr(model, "criterion", None), None
    try:
        yield
    finally:
        model.criterion = criterion


@contextmanager
def checkpoints_written_to(trainer: Any, last: Path, best: Path) -> Iterator[None]:
    """Inside the block, Ultralytics' ``save_model`` writes ``last.pt``/``best.pt`` to other (scratch) paths.

    Ultralytics writes its checkpoint files in place, so a kill in mid-write would leave a truncated ``last.pt``;
    the caller completes the scratch files and moves them into place atomically (``checkpoint.complete_checkpoints``).
    Its ``save_period`` copy (``epoch{N}.pt``) is written in place too, so inside the block it writes none: the caller
    writes that copy atomically (``checkpoint.periodic_copy``).

    Args:
        trainer: The trainer whose ``last``/``best`` paths and ``save_period`` ``save_model`` reads.
        last: Scratch path for ``last.pt``.
        best: Scratch path for ``best.pt``.
    """
    own = trainer.last, trainer.best, trainer.save_period
    trainer.last, trainer.best, trainer.save_period = last, best, -1
    try:
        yield
    finally:
        trainer.last, trainer.best, trainer.save_period = own


@contextmanager
def atomic_final_strip() -> Iterator[None]:
    """Inside the block, Ultralytics' end-of-training ``strip_optimizer`` writes whole files or none.

    ``BaseTrainer.final_eval`` rewrites ``last.pt`` and ``best.pt`` in place (optimizer stripped, weights halved); a
    kill or a full disk in that window truncated them (found by tests/test_kill_resume.py). Here each rewrite goes to
    a scratch file beside the target, which is then moved over it with ``os.replace``.
    """
    import ultralytics.engine.trainer as engine

    strip = engine.strip_optimizer

    def atomic(f: str | Path = "best.pt", s: str = "", updates: dict[str, Any] | None = None) -> dict[str, Any]:
        target = Path(s or f)
        scratch = target.with_name(f"partial-strip-{target.name}")  # not matched by Ultralytics' last*.pt search
        try:
            out = strip(f, str(scratch), updates)
            if scratch.exists():
                os.replace(scratch, target)
        finally:
            scratch.unlink(missing_ok=True)  # only there when the strip failed
        return out

    engine.strip_optimizer = atomic
    try:
        yield
    finally:
        engine.strip_optimizer = strip


def detect_head_outputs(head: torch.nn.Module, maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Detect head's raw dense outputs for given input maps: Ultralytics' ``forward_head`` on its one2many branch.

    Used by cross-head KD to run the teacher's head on the student's (connected) maps. Autograd stays as the caller
    has it: the head's own parameters are frozen, the gradient flows into ``maps``.

    Args:
        head: An Ultralytics Detect head (v8/v9/11, and the dense branch of end-to-end heads).
        maps: One map per level, with the channels the head expects.

    Returns:
        ``{"boxes": (B, 4 * R, A), "scores": (B, C, A)}``.
    """
    out = head.forward_head(maps, **head.one2many)
    return {"boxes": out["boxes"], "scores": out["scores"]}


# The ops at the end of Ultralytics' LiteRT graph that decode the boxes (the Detect head's own ops, the DFL, the
# normalisation to the image) and the concat with the class scores; litert-torch names tensors after these modules.
LITERT_BOX_TAIL = r"head\.Detect_\d+;|DFL_dfl|_NormalizeCoords;|serving_default_output"
BOX_TAILS = ("float", "int16", "int8")


@contextmanager
def litert_int8_box_tail(precision: str) -> Iterator[None]:
    """Inside the block, Ultralytics' full-INT8 LiteRT export keeps the box decode at the graph's end in ``precision``.

    Ultralytics quantizes every op with int8 activations (``ai_edge_quantizer.recipe.static_wi8_ai8``, looked up when
    its ``torch2litert`` runs). The decoded, image-normalised boxes then share one int8 scale with the class scores
    (a step of about 2 pixels at 160 px) and the DFL's fixed 0..15 weights round: the measured loss of INT8 LiteRT
    is box precision (docs/BENCHMARKS.md). This adds rules for the decode's ops to that recipe: ``"float"`` leaves them
    unquantized (the heavy layers stay INT8; the CPU runs the small tail in float), ``"int16"`` gives them int16
    activations (for integer-only accelerators), ``"int8"`` keeps Ultralytics' recipe as it is.

    Args:
        precision: One of ``BOX_TAILS``.
    """
    if precision == "int8":
        yield
        return
    from ai_edge_quantizer import qtyping, recipe, recipe_manager

    every, output = qtyping.TFLOperationName.ALL_SUPPORTED, qtyping.TFLOperationName.OUTPUT
    keep_float = recipe.AlgorithmName.NO_QUANTIZE
    original = recipe.static_wi8_ai8

    def with_box_tail(*args: Any, **kwargs: Any) -> Any:
        rules = recipe_manager.RecipeManager()
        rules.load_quantization_recipe(original(*args, **kwargs))
        if precision == "int16":
            rules.add_static_config(LITERT_BOX_TAIL, every, activation_num_bits=16, weight_num_bits=8)
        else:
            rules.add_quantization_config(LITERT_BOX_TAIL, every, algorithm_key=keep_float)
        # the final concat shares its scope with the graph's output, and a later rule wins: restate Ultralytics'
        # float-output rule after ours
        rules.add_quantization_config(LITERT_BOX_TAIL, output, algorithm_key=keep_float)
        return rules.get_quantization_recipe()

    recipe.static_wi8_ai8 = with_box_tail
    try:
        yield
    finally:
        recipe.static_wi8_ai8 = original


def litert_box_tail_dtype(path: str | Path) -> str:
    """The precision in which a LiteRT detector's boxes and scores are concatenated for its output.

    Args:
        path: A ``.tflite`` file exported by Ultralytics.

    Returns:
        ``"float32"``, ``"int16"`` or ``"int8"`` (numpy's name), or ``"unknown"`` if the graph is not laid out so.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    concat = interpreter.get_output_details()[0]["name"].removesuffix("_dequant")
    dtypes = [t["dtype"].__name__ for t in interpreter.get_tensor_details() if t["name"] == concat]
    return dtypes[0] if dtypes else "unknown"

"""Training-step speed and memory: baseline student, teacher forward, yolo-kd step, Ultralytics' native KD step.

All four run in one process on the same synthetic batches, taking turns step by step, after warm-up; each figure is
the median of repeated steps. With ``--memory`` each mode also runs alone in a fresh process, so its peak memory is
its own (memory is reported only that way), and yolo-kd's peak is checked against the student step's plus the
teacher's weights and one forward's activations. The last line is machine-readable:
``kd/limit=<c/(a+b)> kd/native=<c/d>``.

    python scripts/bench_speed.py --teacher yolov8x.yaml --student yolov8n.yaml --imgsz 320 --batch 4 --steps 10

(a) student step: forward, detection loss, backward, optimizer step
(b) teacher forward alone, the way yolo-kd runs it (fused, reduced precision where native, no grad)
(c) yolo-kd step with the default preset (or --kd): (a) + (b) + the KD terms
(d) Ultralytics' native distill_model= step (DistillationModel, default dis)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # a benchmark installs nothing behind the user's back
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.nn.distill_model import DistillationModel  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, load_checkpoint  # noqa: E402

from yolo_kd.config import KDConfig, load_kd_config  # noqa: E402
from yolo_kd.criterion import KDLoss, probe_head_channels  # noqa: E402
from yolo_kd.distiller import Distiller  # noqa: E402
from yolo_kd.export import wall_seconds  # noqa: E402
from yolo_kd.teacher import FrozenTeacher  # noqa: E402


def build(spec: str, nc: int, args) -> torch.nn.Module:
    """A detection model from a .yaml (random weights: speed does not depend on them) or a .pt."""
    model = load_checkpoint(spec)[0] if spec.endswith(".pt") else DetectionModel(spec, nc=nc, verbose=False)
    model.args = args
    return model


def make_batch(b: int, imgsz: int, nc: int, device: torch.device, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = 6 * b
    xy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.2 + 0.05
    return {
        "img": torch.rand(b, 3, imgsz, imgsz, generator=g).to(device),
        "batch_idx": torch.arange(b).repeat_interleave(6).float().to(device),
        "cls": torch.randint(0, nc, (n, 1), generator=g).float().to(device),
        "bboxes": torch.cat([xy, wh], 1).to(device),
    }


class PeakRSS:
    """Peak resident memory while the block runs (sampled every 5 ms); CUDA peak allocated on GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        return self.current()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated()

    @property
    def gib(self) -> float:
        return self.peak / 2**30


def timed(fn, batches: list[dict], warmup: int, device: torch.device) -> tuple[float, float]:
    for b in batches[:warmup]:
        fn(b)
    with PeakRSS(device) as mem:
        times = [seconds(fn, b, device) for b in batches[warmup:]]
    return statistics.median(times), mem.gib


def seconds(fn, batch: dict, device: torch.device) -> float:
    """Wall time of one step on ``batch`` (GPU work finished on both sides)."""
    return wall_seconds(partial(fn, batch), device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="yolov8x.yaml")
    p.add_argument("--student", default="yolov8n.yaml")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--nc", type=int, default=80)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kd", default="default", help="yolo-kd preset name or YAML for (c) (default: the default preset)")
    p.add_argument("--fp32-teacher", action="store_true", help="yolo-kd teacher in fp32 (kd_teacher_amp=False)")
    p.add_argument(
        "--memory",
        action="store_true",
        help="also run each mode alone in a fresh process and check yolo-kd's peak memory against (a) + (b)",
    )
    p.add_argument("--only", choices=list("abcd"), help=argparse.SUPPRESS)  # internal: one mode per process
    a = p.parse_args()
    if a.memory and not a.only:
        isolated = {mode: run_alone(mode) for mode in "abcd"}

    device = torch.device(a.device)
    base_rss = PeakRSS.current()  # before any model: what every mode's process holds anyway
    amp = device.type == "cuda"
    args = get_cfg(overrides={"imgsz": a.imgsz})
    batches = [make_batch(a.batch, a.imgsz, a.nc, device, s) for s in range(a.warmup + a.steps)]
    cfg = load_kd_config(a.kd, kd_teacher_amp=not a.fp32_teacher)

    def stepper(model: torch.nn.Module, extra: list[torch.nn.Parameter] = (), before: Callable | None = None):
        params = [q for q in model.parameters() if q.requires_grad] + list(extra)
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

        def step(batch: dict) -> None:
            if before is not None:  # what the trainer runs after preprocessing: yolo-kd's teacher pass
                before(batch["img"])
            with torch.autocast(device.type, enabled=amp):
                loss, _ = model.loss(batch) if not isinstance(model, DistillationModel) else model(batch)
            loss.sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    teachers: dict[str, FrozenTeacher] = {}

    def yolo_kd_teacher() -> FrozenTeacher:  # built once, shared by (b) and (c) as in a real run
        if "t" not in teachers:
            teacher = build(a.teacher, a.nc, args)
            teachers["t"] = FrozenTeacher(teacher, device, amp=cfg.kd_teacher_amp, feats=cfg.kd_feat > 0)
        return teachers["t"]

    def make(mode: str) -> Callable[[dict], Any]:
        """One step of ``mode`` as a callable on a batch."""
        if mode == "a":  # baseline
            return stepper(build(a.student, a.nc, args).to(device).train())
        if mode == "b":  # teacher forward alone
            teacher = yolo_kd_teacher()
            return lambda b: teacher(b["img"])
        if mode == "c":  # yolo-kd
            teacher = yolo_kd_teacher()
            student = build(a.student, a.nc, args).to(device).train()
            modules = Distiller(probe_head_channels(student), probe_head_channels(teacher.model), cfg).to(device)
            student.criterion = KDLoss(student.init_criterion(), teacher, modules, cfg, student.model[-1].reg_max)
            return stepper(student, list(modules.parameters()), before=student.criterion.prefetch)
        # (d) native distill_model=
        student = build(a.student, a.nc, args).to(device)
        native = DistillationModel(teacher_model=build(a.teacher, a.nc, args).to(device), student_model=student)
        native.train()
        return stepper(native)

    if a.only:  # one mode in this fresh process: its memory, isolated (see --memory)
        t, peak = timed(make(a.only), batches, a.warmup, device)
        print(json.dumps({"mode": a.only, "ms": t * 1000, "peak_gib": peak, "base_gib": base_rss / 2**30}))
        return
    # The four modes take turns, one step each per round, so a machine that speeds up or slows down during the run
    # shifts them alike; timing them one block after another let such drift move the ratios by 10-20%.
    steps = {mode: make(mode) for mode in "abcd"}
    times: dict[str, list[float]] = {mode: [] for mode in "abcd"}
    for i, batch in enumerate(batches):
        for mode, fn in steps.items():
            dt = seconds(fn, batch, device)
            if i >= a.warmup:
                times[mode].append(dt)
    ta, tb, tc, td = (statistics.median(times[m]) for m in "abcd")
    print(f"device={device} teacher={a.teacher} student={a.student} imgsz={a.imgsz} batch={a.batch}", end=" ")
    print(f"steps={a.steps} kd={a.kd}")
    print("| step | median ms |\n|---|---|")
    for name, t in zip(
        (
            "(a) student step",
            f"(b) teacher forward ({teacher_dtype(device, cfg)})",
            "(c) yolo-kd step",
            "(d) native step",
        ),
        (ta, tb, tc, td),
    ):
        print(f"| {name} | {t * 1000:.1f} |")
    print(f"c/(a+b)={tc / (ta + tb):.3f} c/a={tc / ta:.3f} c/d={tc / td:.3f}")
    if a.memory:
        print(memory_report(isolated, device))
    print(f"kd/limit={tc / (ta + tb):.3f} kd/native={tc / td:.3f}")


def run_alone(mode: str) -> dict:
    """Run this script for one mode in a fresh process (same arguments) and return its JSON line."""
    import subprocess

    argv = [a for a in sys.argv[1:] if a != "--memory"]
    out = subprocess.run([sys.executable, __file__, *argv, "--only", mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_report(isolated: dict, device: torch.device) -> str:
    """Peak memory of each mode alone, and yolo-kd's against the student step plus the teacher's own footprint.

    The bound of issue 5: (c) may use at most (a) plus the teacher's weights plus one set of teacher activations
    without gradient. (b)'s increase over the bare process is exactly the teacher's weights plus one forward's
    activations, so the bound is peak(a) + peak(b) - base (on CUDA, base is 0: allocations only).
    """
    base = 0.0 if device.type == "cuda" else isolated["a"]["base_gib"]
    pa, pb, pc, pd = (isolated[m]["peak_gib"] for m in "abcd")
    bound = pa + pb - base
    rows = [
        "| mode, alone in its process | peak GiB | over the bare process |",
        "|---|---|---|",
        *(f"| ({m}) | {isolated[m]['peak_gib']:.3f} | {isolated[m]['peak_gib'] - base:.3f} |" for m in "abcd"),
        f"bare process {base:.3f} GiB; bound for (c) = (a) + (b) - bare = {bound:.3f} GiB; (c) {pc:.3f} GiB: "
        f"{'within' if pc <= bound else 'OVER'} the bound by {abs(bound - pc):.3f} GiB; (c)/(d) = {pc / pd:.2f}",
    ]
    return "\n".join(rows)


def teacher_dtype(device: torch.device, cfg: KDConfig) -> str:
    from yolo_kd.teacher import reduced_precision

    dtype = reduced_precision(device) if cfg.kd_teacher_amp else None
    return str(dtype or torch.float32).replace("torch.", "")


if __name__ == "__main__":
    main()

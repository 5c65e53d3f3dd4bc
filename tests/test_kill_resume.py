"""Fault injection: a short KD training killed at many moments (epoch loop, saves, final evaluation), each resumed.

Every time, ``last.pt`` and ``best.pt`` must load with plain Ultralytics, the run must finish, and ``results.csv``
must hold each epoch once. A kill moment is the k-th change seen in the run's files (a checkpoint or scratch file
appearing or vanishing, a results row): an uninterrupted run counts its changes, and the kills are spread evenly over
them, so they land in and around every save and the final evaluation whatever the machine's speed.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import IMGSZ

MOMENTS = 8
EPOCHS = 3


def _cmd(data: str, teacher: str, project: Path, name: str) -> list[str]:
    return [
        sys.executable, "-m", "yolo_kd.cli", "train", "model=yolov8n.yaml", f"teacher={teacher}", f"data={data}",
        "kd=full", f"epochs={EPOCHS}", f"imgsz={IMGSZ}", "batch=8", "workers=0", "plots=False",
        f"project={project}", f"name={name}",
    ]  # fmt: skip


def _loads(path: Path) -> bool:
    """Loads as a plain Ultralytics checkpoint (in this process, through Ultralytics' own loader)."""
    from ultralytics.nn.tasks import load_checkpoint

    try:
        load_checkpoint(path)
        return True
    except Exception:
        return False


def _state(run: Path) -> tuple:
    """What a watcher sees of the run's files: the names under weights/ (checkpoints and their scratch files appear,
    are replaced and vanish at each save) and the number of results.csv rows."""
    names = tuple(sorted(p.name for p in (run / "weights").glob("*"))) if (run / "weights").is_dir() else ()
    try:
        rows = len((run / "results.csv").read_text().splitlines())
    except FileNotFoundError:
        rows = 0
    return names, rows


def _run_until(cmd: list[str], env: dict, run: Path, kill_at: int | None) -> int:
    """Run ``cmd``, SIGKILL it at the ``kill_at``-th file change (never if None); return the changes seen."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen, changes = _state(run), 0
    try:
        while proc.poll() is None:
            now = _state(run)
            if now != seen:
                seen, changes = now, changes + 1
                if kill_at is not None and changes >= kill_at:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.02)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return changes


def _epochs(run: Path) -> list[int]:
    with open(run / "results.csv") as f:
        return [int(float(r["epoch"])) for r in csv.DictReader(f, skipinitialspace=True)]


@pytest.mark.slow
def test_kills_at_many_moments_each_resume_whole(data_yaml: str, teacher_pt: str, tmp_path: Path) -> None:
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    total = _run_until(_cmd(data_yaml, teacher_pt, tmp_path, "whole"), env, tmp_path / "whole", None)
    assert _epochs(tmp_path / "whole") == list(range(1, EPOCHS + 1))
    assert total >= MOMENTS, f"only {total} file changes in a whole run"
    outcomes = []
    for i in range(1, MOMENTS + 1):
        name = f"kill{i}"
        run = tmp_path / name
        _run_until(
            _cmd(data_yaml, teacher_pt, tmp_path, name),
            env,
            run,
            kill_at=1 + round((i - 1) * (total - 1) / (MOMENTS - 1)),
        )
        last, best = run / "weights" / "last.pt", run / "weights" / "best.pt"
        for ckpt in (last, best):
            assert not ckpt.exists() or _loads(ckpt), f"kill {i}: {ckpt.name} does not load"
        if not last.exists():  # killed before the first checkpoint: nothing to resume, a new run starts over
            outcomes.append("before the first checkpoint")
            continue
        resumed = subprocess.run(
            [sys.executable, "-m", "yolo_kd.cli", "train", f"resume={last}"], env=env, capture_output=True, text=True
        )
        if resumed.returncode == 2 and "nothing to resume" in resumed.stderr:
            outcomes.append("finished before the kill")  # refused in one line, as a finished run should be
        else:
            assert resumed.returncode == 0, f"kill {i}: resume failed: {resumed.stderr[-2000:]}"
            outcomes.append("resumed")
        assert _loads(last) and _loads(best), f"kill {i}: a checkpoint does not load after resuming"
        assert _epochs(run) == list(range(1, EPOCHS + 1)), f"kill {i}: results.csv epochs {_epochs(run)}"
    print(f"kills at {MOMENTS} moments ({total} file changes in a whole run): {outcomes}")
    # the moments really spread over the run: some mid-run (resumed), some after the last epoch's save
    assert outcomes.count("resumed") >= 2 and "finished before the kill" in outcomes, outcomes

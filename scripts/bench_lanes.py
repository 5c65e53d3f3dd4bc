"""Run many accuracy-benchmark runs side by side: one ``bench_accuracy.py`` process per (method, seed).

``bench_accuracy.py`` trains its methods one after another. On a machine with cores (and a GPU) to spare, the runs
of one setting are independent and can run at once: this script starts one bench process per method and seed, at
most ``--lanes`` at a time, each with its own log, stops them all at ``--deadline`` seconds, and then tabulates every
recorded run of the setting with one ``--table-only`` call (the only one that writes to ``--out``). The cached stages
(teacher, pretrained student) are prepared first by a single ``--prepare-only`` call, so no two processes ever train
or write the same stage; give ``--teacher`` (and ``--pretrained-student`` in the finetune regime) to skip training
them.

    python scripts/bench_lanes.py --runs baseline native default "default:kd_final=0@0,1" --seeds 0 1 2 \\
        --lanes 12 --deadline 480 -- --regime finetune --teacher t.pt --pretrained-student s.pt --epochs 80 \\
        --imgsz 128 --device 0 --project runs/bench_gpu --out runs/bench_gpu/table.md

A run is ``METHOD`` or ``METHOD:KEY=VALUE,KEY=VALUE`` (``--set`` overrides for that run), optionally followed by
``@SEED,SEED`` to train it on those seeds instead of ``--seeds``. Ultralytics' CPU training uses one thread per
process on small machines, so two lanes on a 2-core machine each run at full speed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench_accuracy.py"
DEFAULT_PROJECT = BENCH.parents[1] / "runs" / "bench"  # bench_accuracy.py's own default


def bench_args(run: str) -> list[str]:
    """``"default:kd_final=0,kd_cross=1"`` -> ``["--methods", "default", "--set", "kd_final=0", "kd_cross=1"]``."""
    method, _, sets = run.partition(":")
    return ["--methods", method] + (["--set", *sets.split(",")] if sets else [])


def run_seeds(spec: str, seeds: list[int]) -> tuple[str, list[int]]:
    """``"default:kd_final=0@0,1"`` -> ``("default:kd_final=0", [0, 1])``; without ``@`` the run takes ``seeds``."""
    run, at, own = spec.partition("@")
    if not at:
        return run, seeds
    try:
        return run, [int(s) for s in own.split(",")]
    except ValueError:
        raise SystemExit(f"--runs {spec}: seeds after '@' must be integers, e.g. {run}@0,1") from None


def lane_queue(runs: list[str], seeds: list[int], methods: tuple[str, ...]) -> list[tuple[str, int]]:
    """Every (run, seed) once, every run's first seed before any second one (a deadline then cuts whole seeds).

    Raises:
        SystemExit: A method the bench does not know, in one line.
    """
    pairs = [(run, seed) for run, own in (run_seeds(spec, seeds) for spec in runs) for seed in own]
    unknown = sorted({run.partition(":")[0] for run, _ in pairs} - set(methods))
    if unknown:
        raise SystemExit(f"--runs: unknown method(s) {unknown}; bench_accuracy.py knows {list(methods)}")
    return sorted(dict.fromkeys(pairs), key=lambda item: item[1])


def tag(run: str, seed: int) -> str:
    """A file name for a lane's log: ``default:kd_final=0`` seed 1 -> ``default-kd_final0_s1``."""
    safe = "".join(c if c.isalnum() or c in "_." else "-" for c in run.replace("=", ""))
    return f"{safe}_s{seed}"


def stop(proc: subprocess.Popen) -> None:
    """Stop a lane and everything it started (its own process group: Ultralytics' multi-GPU workers too)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    from bench_accuracy import METHODS  # noqa: PLC0415 (imports Ultralytics: only once the arguments parse)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="METHOD or METHOD:KEY=VALUE,KEY=VALUE, then @SEEDS")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--lanes", type=int, default=2, help="bench processes at once")
    p.add_argument("--deadline", type=float, default=None, help="seconds from the start; then running lanes stop")
    p.add_argument("--logs", default=None, help="folder for the lanes' logs (default: <project>/lanes_<time>)")
    p.add_argument("bench", nargs=argparse.REMAINDER, help="-- then the arguments every bench process shares")
    args = p.parse_args()
    if args.lanes < 1:
        raise SystemExit(f"--lanes {args.lanes}: at least 1")
    shared = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    queue = lane_queue(args.runs, args.seeds, METHODS)
    project = Path(shared[shared.index("--project") + 1]) if "--project" in shared else DEFAULT_PROJECT
    logs = Path(args.logs) if args.logs else project / f"lanes_{datetime.now():%Y%m%d_%H%M%S}"
    logs.mkdir(parents=True, exist_ok=True)
    # one thread per process: the lanes share the cores instead of each spawning one thread per core
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "YOLO_OFFLINE": "1"}
    start = time.time()

    # the stages every lane needs, prepared once, so that no two lanes train the same stage
    bench = [sys.executable, str(BENCH), *shared, "--methods", "baseline"]  # the methods train nothing here
    if subprocess.run([*bench, "--prepare-only"], env=env).returncode != 0:
        raise SystemExit("bench_lanes: preparing the shared stages failed (above); no lane started")
    print(f"prepared the shared stages in {time.time() - start:.0f} s", flush=True)

    running: list[tuple[subprocess.Popen, str, float]] = []
    failed = []
    try:
        while queue or running:
            late = args.deadline is not None and time.time() - start > args.deadline
            while queue and len(running) < args.lanes and not late:
                run, seed = queue.pop(0)
                name = tag(run, seed)
                # --out: only the final table-only call writes the table
                cmd = [sys.executable, str(BENCH), *shared, *bench_args(run), "--seeds", str(seed), "--out", os.devnull]
                with open(logs / f"lane_{name}.log", "x") as log:
                    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                running.append((proc, name, time.time()))
            time.sleep(2)
            late = args.deadline is not None and time.time() - start > args.deadline
            for proc, name, t0 in list(running):
                if late and proc.poll() is None:
                    stop(proc)
                    print(f"{name}: stopped at the deadline after {time.time() - t0:.0f} s", flush=True)
                if proc.poll() is not None:
                    running.remove((proc, name, t0))
                    if proc.returncode != 0:
                        failed.append(name)
                    print(f"{name}: exit {proc.returncode} after {time.time() - t0:.0f} s", flush=True)
            if late:
                failed += [f"{tag(run, seed)} (not started)" for run, seed in queue]
                queue = []
    finally:  # Ctrl-C or an error here: no lane goes on unsupervised
        for proc, _, _ in running:
            stop(proc)

    subprocess.run([*bench, "--table-only"], env=env)
    print(f"all lanes done in {time.time() - start:.0f} s; failed or stopped: {failed or 'none'}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH.parent))
    main()

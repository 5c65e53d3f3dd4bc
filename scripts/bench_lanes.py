"""Run many accuracy-benchmark runs side by side: one ``bench_accuracy.py`` process per (method, seed).

``bench_accuracy.py`` trains its methods one after another. On a machine with cores (and a GPU) to spare, the runs
of one setting are independent and can run at once: this script starts one bench process per method and seed, at
most ``--lanes`` at a time, each with its own log, stops them all at ``--deadline`` seconds, and then tabulates every
recorded run of the setting with one ``--table-only`` call. The cached stages (teacher, pretrained student) are
prepared first by a single ``--table-only`` call, so no two processes ever train or write the same stage; give
``--teacher`` (and ``--pretrained-student`` in the finetune regime) to skip training them.

    python scripts/bench_lanes.py --runs baseline native default "default:kd_final=0" --seeds 0 1 2 \\
        --lanes 12 --deadline 480 -- --regime finetune --teacher t.pt --pretrained-student s.pt --epochs 80 \\
        --imgsz 128 --device 0 --project runs/bench_gpu --out runs/bench_gpu/table.md

A run is ``METHOD`` or ``METHOD:KEY=VALUE,KEY=VALUE`` (``--set`` overrides for that run), optionally followed by
``@SEED,SEED`` to train it on those seeds instead of ``--seeds``. Ultralytics' CPU
training uses one thread per process on small machines, so two lanes on a 2-core machine each run at full speed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench_accuracy.py"


def bench_args(run: str) -> list[str]:
    """``"default:kd_final=0,kd_cross=1"`` -> ``["--methods", "default", "--set", "kd_final=0", "kd_cross=1"]``."""
    method, _, sets = run.partition(":")
    return ["--methods", method] + (["--set", *sets.split(",")] if sets else [])


def run_seeds(spec: str, seeds: list[int]) -> tuple[str, list[int]]:
    """``"default:kd_final=0@0,1"`` -> ``("default:kd_final=0", [0, 1])``; without ``@`` the run takes ``seeds``."""
    run, at, own = spec.partition("@")
    return run, [int(s) for s in own.split(",")] if at else seeds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="METHOD or METHOD:KEY=VALUE,KEY=VALUE")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--lanes", type=int, default=2, help="bench processes at once")
    p.add_argument("--deadline", type=float, default=None, help="seconds from the start; then running lanes stop")
    p.add_argument("--logs", default=None, help="folder for the lanes' logs (default: the bench's --project)")
    p.add_argument("bench", nargs=argparse.REMAINDER, help="-- then the arguments every bench process shares")
    args = p.parse_args()
    shared = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    project = shared[shared.index("--project") + 1] if "--project" in shared else "runs/bench"
    logs = Path(args.logs or project)
    logs.mkdir(parents=True, exist_ok=True)
    # one thread per process: the lanes share the cores instead of each spawning one thread per core
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "YOLO_OFFLINE": "1"}
    start = time.time()

    # the stages every lane needs, prepared once; "no runs recorded yet" is its expected complaint on a fresh project
    table = [sys.executable, str(BENCH), *shared, "--methods", "baseline", "--table-only"]  # methods train nothing
    prep = subprocess.run([*table, "--out", os.devnull], env=env)
    print(f"prepared the shared stages (exit {prep.returncode}) in {time.time() - start:.0f} s", flush=True)

    queue = sorted(
        ((run, seed) for run, seeds in map(run_seeds, args.runs, [args.seeds] * len(args.runs)) for seed in seeds),
        key=lambda item: item[1],  # every method's seed 0 first: a deadline then cuts whole seeds, not methods
    )
    running: list[tuple[subprocess.Popen, str, float]] = []
    failed = []
    while queue or running:
        late = args.deadline is not None and time.time() - start > args.deadline
        while queue and len(running) < args.lanes and not late:
            run, seed = queue.pop(0)
            tag = f"{run.replace(':', '-').replace(',', '-').replace('=', '')}_s{seed}"
            with open(logs / f"lane_{tag}.log", "w") as log:
                cmd = [sys.executable, str(BENCH), *shared, *bench_args(run), "--seeds", str(seed)]
                running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), tag, time.time()))
        time.sleep(2)
        late = args.deadline is not None and time.time() - start > args.deadline
        for proc, tag, t0 in list(running):
            if late and proc.poll() is None:
                proc.kill()
                proc.wait()
                print(f"{tag}: stopped at the deadline after {time.time() - t0:.0f} s", flush=True)
            if proc.poll() is not None:
                running.remove((proc, tag, t0))
                if proc.returncode != 0:
                    failed.append(tag)
                print(f"{tag}: exit {proc.returncode} after {time.time() - t0:.0f} s", flush=True)
        if late:
            failed += [f"{run}_s{seed} (not started)" for run, seed in queue]
            queue = []

    subprocess.run(table, env=env)
    print(f"all lanes done in {time.time() - start:.0f} s; failed or stopped: {failed or 'none'}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

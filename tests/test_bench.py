"""The accuracy bench's fine-tune regime (the users' regime) and the INT8 bench on its students, at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_finetune_regime_end_to_end(tmp_path: Path) -> None:
    args = [
        sys.executable,
        str(ROOT / "scripts" / "bench_accuracy.py"),
        "--regime", "finetune",
        "--imgsz", "64",
        "--n-train", "16",
        "--n-val", "8",
        "--source-n-train", "16",
        "--source-epochs", "1",
        "--teacher-epochs", "1",
        "--epochs", "2",
        "--batch", "8",
        "--seeds", "0",
        "--methods", "baseline", "default", "default_yaml",
        "--project", str(tmp_path / "runs"),
        "--data-root", str(tmp_path / "data"),
        "--out", str(tmp_path / "BENCH.md"),
    ]  # fmt: skip
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    first = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    runs = tmp_path / "runs" / "finetune"
    pretrained = sorted(runs.glob("pretrain_*"))
    assert [p.name.split("_")[1] for p in pretrained] == ["yolov8m", "yolov8n"]  # deeper teacher and the student
    results = [json.loads(line) for line in (runs / "accuracy_results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in results} == {"baseline", "default", "default_yaml"}
    student = results[0]["setting"].split("|")[0]
    assert student.endswith("best.pt") and "pretrain_yolov8n" in student  # fine-tuned from the pretrained .pt
    # default_yaml builds the student from its YAML, so it starts from the teacher's weights instead of the .pt
    from_yaml = next(r for r in results if r["method"] == "default_yaml")
    assert yaml.safe_load((Path(from_yaml["run"]) / "args.yaml").read_text())["model"] == "yolov8n.yaml"
    assert "student starts from the teacher's weights" in first.stdout + first.stderr
    report = (tmp_path / "BENCH.md").read_text()
    assert "regime finetune" in report and "| default |" in report and "last quarter of its epochs" in report

    # a second invocation reuses the completed pretraining runs instead of training them again
    again = subprocess.run([*args, "--table-only"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("reusing") == 3  # student, teacher's pretraining, teacher's fine-tuning

    # a method's run killed part-way (a deadline, a session's end) is continued by the same command from its last.pt
    longer = [*args[: args.index("--epochs")], "--epochs", "4", *args[args.index("--epochs") + 2 :]]
    longer[longer.index("--methods") + 1 : longer.index("--project")] = ["default"]
    last = runs / "e4" / "default_s0" / "weights" / "last.pt"
    killed = subprocess.Popen(longer, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    deadline = time.time() + 600
    while not last.is_file() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    killed.kill()  # SIGKILL after the first epoch's checkpoint: the run stops in its second epoch
    killed.wait()
    assert last.is_file()
    recorded = (runs / "accuracy_results.jsonl").read_text().splitlines()
    assert len(recorded) == len(results)  # the killed run recorded nothing
    resumed = subprocess.run(longer, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming default seed 0 from" in resumed.stdout
    record = json.loads((runs / "accuracy_results.jsonl").read_text().splitlines()[-1])
    assert (record["method"], record["resumed"]) == ("default", True)
    csv_rows = (runs / "e4" / "default_s0" / "results.csv").read_text().splitlines()
    assert [row.split(",")[0].strip() for row in csv_rows] == ["epoch", "1", "2", "3", "4"]  # none lost or repeated

    # the INT8 bench starts from those fp32 students: a PTQ ONNX row and the KD-during-QAT row, then a rerun skips both
    qat = [
        sys.executable,
        str(ROOT / "scripts" / "bench_qat.py"),
        "--accuracy-project", str(runs),
        "--epochs", "2",
        "--imgsz", "64",
        "--batch", "8",
        "--seeds", "0",
        "--finetune", "1",
        "--rows", "3", "5",
        "--work", str(tmp_path / "qat"),
    ]  # fmt: skip
    int8 = subprocess.run(qat, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert int8.returncode == 0, int8.stdout[-3000:] + int8.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "qat" / "bench_qat.jsonl").read_text().splitlines()]
    assert [(r["row"], r["format"]) for r in rows] == [("distilled PTQ", "onnx"), ("distilled QAT (KD)", "onnx")]
    assert rows[0]["int8_ranges"] != rows[1]["int8_ranges"]  # calibrated at export vs learnt in training
    assert "| distilled QAT (KD) | onnx |" in int8.stdout
    rerun = subprocess.run(qat, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert rerun.returncode == 0 and len((tmp_path / "qat" / "bench_qat.jsonl").read_text().splitlines()) == 2

    # side by side: bench_lanes.py runs one bench process per (method, seed) from the given teacher and pretrained
    # student (no stage retrained); a run's own seeds (@1) replace --seeds; one table at the end, in --out only
    teacher = next(runs.glob("teacher_*/weights/best.pt"))
    lanes = [
        sys.executable,
        str(ROOT / "scripts" / "bench_lanes.py"),
        "--runs", "baseline@1", "default:kd_final=0",
        "--seeds", "0",
        "--lanes", "2",
        "--logs", str(tmp_path / "lanes"),
        "--",
        *args[2:args.index("--seeds")],
        "--teacher", str(teacher),
        "--pretrained-student", student,
        "--project", str(tmp_path / "runs_lanes"),
        "--data-root", str(tmp_path / "data"),
        "--out", str(tmp_path / "BENCH_lanes.md"),
    ]  # fmt: skip
    side = subprocess.run(lanes, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert side.returncode == 0, side.stdout[-3000:] + side.stderr[-3000:]
    stages = [p.name for p in (tmp_path / "runs_lanes" / "finetune").glob("*/weights")]
    assert stages == []  # teacher and pretrained student given: no stage trained
    recorded = (tmp_path / "runs_lanes" / "finetune" / "accuracy_results.jsonl").read_text().splitlines()
    assert sorted((json.loads(r)["method"], json.loads(r)["seed"]) for r in recorded) == [
        ("baseline", 1),
        ("default[kd_final=0]", 0),
    ]
    assert sorted(p.name for p in (tmp_path / "lanes").iterdir()) == [
        "lane_baseline_s1.log",
        "lane_default-kd_final0_s0.log",
    ]
    assert "failed or stopped: none" in side.stdout
    table = (tmp_path / "BENCH_lanes.md").read_text()
    assert table.count("## Accuracy") == 1 and "| default[kd_final=0] |" in table  # the lanes wrote no table of theirs

    # past the deadline no lane starts: the run says which, and fails
    late = [
        *lanes[: lanes.index("--logs")],
        "--deadline",
        "0",
        "--logs",
        str(tmp_path / "lanes_late"),
        *lanes[lanes.index("--") :],
    ]
    cut = subprocess.run(late, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert cut.returncode == 1 and "baseline_s1 (not started)" in cut.stdout, cut.stdout[-3000:] + cut.stderr[-3000:]
    assert not list((tmp_path / "lanes_late").iterdir())


def test_bench_lanes_queue() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_lanes import bench_args, lane_queue, tag

    methods = ("baseline", "native", "default")
    queue = lane_queue(["baseline", "default:kd_final=0@1,2", "baseline@0"], [0, 1], methods)
    # each (run, seed) once, every run's seed 0 before any seed 1
    assert queue == [("baseline", 0), ("baseline", 1), ("default:kd_final=0", 1), ("default:kd_final=0", 2)]
    assert bench_args("default:kd_final=0,kd_cross=1") == ["--methods", "default", "--set", "kd_final=0", "kd_cross=1"]
    assert tag("default:kd_class_map=maps/a.yaml", 2) == "default-kd_class_mapmaps-a.yaml_s2"  # no '/' in a file name
    with pytest.raises(SystemExit, match="unknown method"):
        lane_queue(["defualt"], [0], methods)
    with pytest.raises(SystemExit, match="must be integers"):
        lane_queue(["default@x"], [0], methods)


def test_plot_benchmarks_table_of_part_way_runs() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from plot_benchmarks import table

    # baseline finished (4 epochs), the other run stopped part-way after 2: its later cells stay empty
    out = table({"baseline": [0.1, 0.2, 0.3, 0.4], "default": [0.15, 0.25]}, every=2).splitlines()
    assert out[0] == "| epoch | 2 | 4 |"
    assert out[2] == "| baseline | 0.200 | 0.400 |"
    assert out[3] == "| default | 0.250 |  |"
    assert out[4] == "| default - baseline (points) | +5.0 |  |"


def test_bench_reports_each_runs_last_quarter_rise(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_accuracy import plateau

    def run(name: str, curve: list[float]) -> dict:
        folder = tmp_path / name
        folder.mkdir()
        rows = [f"{i + 1},0.1,{v}" for i, v in enumerate(curve)]
        (folder / "results.csv").write_text("\n".join(["epoch, time, metrics/mAP50-95(B)", *rows]) + "\n")
        method, seed = name.rsplit("_s", 1)
        return {"method": method, "seed": int(seed), "run": str(folder)}

    # 8 epochs: the last quarter starts from epoch 6's value
    results = [run("default_s0", [0.0] * 5 + [0.50, 0.51, 0.52]), run("baseline_s0", [0.0] * 5 + [0.40, 0.42, 0.45])]
    lines = plateau(results).split("  \n")
    assert lines == [
        "Baseline over the last quarter of its epochs (plateau: under +0.5 points): seed 0: +5.00 points "
        "(0.4000 -> 0.4500).",
        "default over the last quarter of its epochs: seed 0: +2.00 points (0.5000 -> 0.5200).",
    ]
    # 40 epochs: epoch 30 against 40, and the 2-epoch means ending there (a noisy last epoch moves the first only)
    noisy = [0.0] * 28 + [0.60, 0.62] + [0.615] * 8 + [0.64, 0.60]
    lines = plateau([run("baseline_s1", noisy)]).split("  \n")
    assert lines == [
        "Baseline over the last quarter of its epochs (plateau: under +0.5 points): seed 1: -2.00 points "
        "(0.6200 -> 0.6000), +1.00 between 2-epoch means."
    ]


def test_init_methods_take_only_the_init_keys() -> None:
    """``baseline_init:kd_init_channels=even`` is its own variant; KD keys do not apply to a method without KD."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_accuracy import method_name

    assert method_name("baseline_init", ["kd_init_channels=even"]) == "baseline_init[kd_init_channels=even]"
    assert method_name("baseline_init", ["kd_final=0"]) == "baseline_init"
    assert method_name("baseline", ["kd_init_channels=even"]) == "baseline"
    assert method_name("default", ["kd_init_channels=even"]) == "default[kd_init_channels=even]"


def test_bench_records_survive_a_run_killed_while_writing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_accuracy import append_record, read_records

    records = tmp_path / "accuracy_results.jsonl"
    append_record(records, {"method": "baseline", "seed": 0})
    with open(records, "a") as f:
        f.write('{"method": "default", "se')  # the half line a killed lane leaves
    append_record(records, {"method": "default", "seed": 1})  # a later run appends after it
    got = read_records(records)
    assert got == [{"method": "baseline", "seed": 0}, {"method": "default", "seed": 1}]
    assert "accuracy_results.jsonl:2: not a whole record" in capsys.readouterr().err


def test_runs_with_teachers_side_by_side_get_a_folder_each() -> None:
    """Two teacher files in one folder must not share a run folder: a later run would overwrite the earlier one's."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_accuracy as bench

    assert bench.teacher_folder("runs/x/teacher_a/weights/best.pt") == "with_teacher_a"
    assert bench.teacher_folder("runs/snap/t33.pt") != bench.teacher_folder("runs/snap/t61.pt")


def test_gamma_probe_ranks_and_top_thirds_by_hand() -> None:
    """scripts/probe_gamma_ranking.py's two measures on hand-made vectors: Spearman and the largest third."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import torch
    from probe_gamma_ranking import spearman, top_third

    a = torch.tensor([1.00, 1.03, 0.98, 1.01, 0.99, 1.02])
    assert spearman(a, a * 2) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ranks 2,5,0,3,1,4 against 0..5: 1 - 6 * sum(d^2) / (n (n^2 - 1)) with d = 2,4,-2,0,-3,-1 -> 1 - 6 * 34 / 210
    assert spearman(a, torch.arange(6.0)) == pytest.approx(1 - 6 * 34 / 210)
    assert top_third(a) == {1, 5}

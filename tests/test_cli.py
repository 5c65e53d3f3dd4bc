"""The yolo-kd command line: what it sets for Ultralytics, and its one-line refusals before anything loads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from yolo_kd.cli import main


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter without YOLO_OFFLINE/YOLO_AUTOINSTALL set; return its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in {"YOLO_OFFLINE", "YOLO_AUTOINSTALL"}}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


@pytest.mark.slow  # a fresh Python process (Ultralytics' import alone takes seconds)
def test_importing_the_library_changes_no_environment() -> None:
    out = _python(
        """
        import os
        import yolo_kd
        from yolo_kd import KDDetectionTrainer
        print(os.environ.get("YOLO_OFFLINE"), os.environ.get("YOLO_AUTOINSTALL"))
        """
    )
    assert out.splitlines()[-1] == "None None"


@pytest.mark.slow  # fresh Python processes
@pytest.mark.parametrize("ultralytics_first", [True, False])
def test_cli_turns_auto_install_and_network_probe_off_whatever_the_import_order(ultralytics_first: bool) -> None:
    first = "import os; os.environ['YOLO_OFFLINE'] = '1'; import ultralytics.utils.checks" if ultralytics_first else ""
    out = _python(
        f"""
        {first}
        from yolo_kd.cli import main
        assert main(["help"]) == 0
        import os
        import ultralytics.utils as u
        import ultralytics.utils.checks as c
        print("RESULT", u.AUTOINSTALL, c.AUTOINSTALL, u.ONLINE, c.ONLINE, os.environ["YOLO_AUTOINSTALL"])
        """
    )
    assert out.splitlines()[-1] == "RESULT False False False False false"


def _refused(argv: list[str], capsys: pytest.CaptureFixture, folder: Path) -> str:
    """Run a command that must be refused: exit 2, one line on stderr, nothing new in ``folder``."""
    before = sorted(folder.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert sorted(folder.rglob("*")) == before, "a refused command wrote files"
    return err


def test_malformed_yaml_is_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kd_cls: [1.0, 2.0\nkd_box: 1\n")
    base = ["train", "model=yolov8n.yaml", "teacher=missing.pt", f"project={tmp_path / 'p'}"]
    err = _refused([*base, f"kd={bad}"], capsys, tmp_path)
    assert f"kd={bad}: malformed YAML" in err and "line" in err
    err = _refused([*base, f"kd_class_map={bad}"], capsys, tmp_path)
    assert f"kd_class_map={bad}: malformed YAML" in err


def test_misspelt_keys_are_refused_before_anything_loads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # teacher=missing.pt would be the first error if the teacher were loaded before the keys were checked
    err = _refused(["train", "teacher=missing.pt", f"unlabelled={tmp_path}"], capsys, tmp_path)
    assert "unlabelled= (did you mean unlabeled=?)" in err
    err = _refused(["label", "model=missing.pt", f"source={tmp_path}", "confidence=0.5"], capsys, tmp_path)
    assert "'label' does not take confidence=" in err and "conf" in err
    err = _refused(["dataset", f"root={tmp_path}", "n_trian=5"], capsys, tmp_path)
    assert "n_trian= (did you mean n_train=?)" in err
    err = _refused(["export", "model=missing.pt", "formt=onnx"], capsys, tmp_path)
    assert "formt= (did you mean format=?)" in err


def test_resume_from_a_file_that_is_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "last.pt"
    junk.write_text("not a checkpoint")
    err = _refused(["train", f"resume={junk}"], capsys, tmp_path)
    assert f"resume={junk}: not an Ultralytics checkpoint" in err
    assert "no such checkpoint" in _refused(["train", f"resume={tmp_path / 'nope.pt'}"], capsys, tmp_path)


def test_output_folder_that_cannot_be_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if os.geteuid() == 0:  # root writes through permission bits; /proc refuses everyone
        locked = Path("/proc/yolo_kd_test")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
    err = _refused(["dataset", f"root={locked}", "n_train=2", "n_val=2"], capsys, tmp_path)
    assert f"root={locked}: cannot write in" in err
    err = _refused(["train", "teacher=missing.pt", f"project={locked / 'runs'}"], capsys, tmp_path)
    assert f"project={locked / 'runs'}: cannot write in" in err
    file = tmp_path / "file"
    file.write_text("x")
    assert "is a file, not a folder" in _refused(["dataset", f"root={file / 'sub'}"], capsys, tmp_path)


def test_resume_of_a_finished_run_is_one_line_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Ultralytics' Model.train would quietly start a new run from a finished checkpoint (and yolo-kd then ask for
    teacher=); the CLI says the run finished."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    last = tmp_path / "weights" / "last.pt"
    last.parent.mkdir()
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    torch.save({"model": model, "epoch": -1, "train_args": {"epochs": 2}, "kd": {"config": {}, "teacher": "t"}}, last)
    assert main(["train", f"resume={last}"]) == 2
    err = capsys.readouterr().err
    assert "finished (epoch 2 of 2); nothing to resume" in err and err.count("\n") == 1


def test_train_refuses_in_one_line_what_ultralytics_would_fetch_or_trace_back(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("train: images\nval: images\nnames: {0: a}\n")
    base = ["train", "teacher=missing.pt", f"project={tmp_path / 'p'}"]
    # no data=: Ultralytics would fall back to coco8.yaml and download it
    assert "train needs data=" in _refused(base, capsys, tmp_path)
    assert f"data={tmp_path / 'no.yaml'}: no such file" in _refused(
        [*base, f"data={tmp_path / 'no.yaml'}"], capsys, tmp_path
    )
    with_data = [*base, f"data={data}"]
    assert "'epochs=abc' is of invalid type str" in _refused([*with_data, "epochs=abc"], capsys, tmp_path)
    assert "model=nowhere.yaml: no such model YAML" in _refused([*with_data, "model=nowhere.yaml"], capsys, tmp_path)
    assert "cfg=" in _refused([*with_data, f"cfg={tmp_path / 'no_cfg.yaml'}"], capsys, tmp_path)
    assert "resume needs a path" in _refused(["train", "resume=1"], capsys, tmp_path)
    # Ultralytics' own distiller would wrap the student beside yolo-kd's
    assert "distill_model=t.pt is Ultralytics' own distillation" in _refused(
        [*with_data, "distill_model=t.pt"], capsys, tmp_path
    )


def test_names_and_paths_keep_the_text_typed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from yolo_kd.cli import parse_pairs

    assert parse_pairs(["project=2024", "name=1.10", "epochs=3", "kd=None"]) == {
        "project": "2024", "name": "1.10", "epochs": 3, "kd": None,
    }  # fmt: skip
    err = _refused(["dataset", f"root={tmp_path}", "n_train=1.5"], capsys, tmp_path)
    assert "n_train=1.5: give a whole number" in err
    assert "kd=../presets/full: not a YAML file nor a preset name" in _refused(
        ["train", "teacher=missing.pt", "kd=../presets/full"], capsys, tmp_path
    )
    assert "device=cuda:9" in _refused(["demo", "device=cuda:9", f"project={tmp_path / 'd'}"], capsys, tmp_path)

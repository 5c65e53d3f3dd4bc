"""Open-vocabulary teachers (YOLO-World, YOLOE), offline: built from their YAMLs, given seeded random embeddings."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from yolo_kd.cli import main

from .conftest import IMGSZ

# Student classes (kdshapes) the teacher is prompted for; the others get no prompt, so the teacher knows a subset
PROMPTS = {"disc_red": "red disc, disc_red", "square_solid": "solid square", "hexagon": "hexagon"}
UNPROMPTED = ["disc_orange", "square_hollow", "triangle_up", "triangle_down", "octagon", "plus", "cross"]
FAMILIES = {"world": "yolov8n-worldv2.yaml", "yoloe": "yoloe-11n-seg.yaml"}


def _build(family: str) -> torch.nn.Module:
    from ultralytics.nn.tasks import WorldModel, YOLOESegModel

    torch.manual_seed(0)
    cls = WorldModel if family == "world" else YOLOESegModel
    model = cls(FAMILIES[family], nc=4, verbose=False)
    model.names = {0: "person", 1: "car", 2: "dog", 3: "cat"}  # what it was "trained" for: irrelevant to the student
    model.task = "detect" if family == "world" else "segment"
    for contrastive in model.model[-1].cv4:  # their -10 init bias would keep every random score below any conf=
        contrastive.bias.data.fill_(0.0)
    return model.eval()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A YOLO-World and a YOLOE-seg checkpoint, saved as Ultralytics saves them (random weights)."""
    folder = tmp_path_factory.mktemp("openvocab")
    out = {}
    for family in FAMILIES:
        model = _build(family)
        path = folder / f"{family}.pt"
        torch.save({"model": model, "train_args": {"imgsz": IMGSZ, "task": model.task}, "date": "test"}, path)
        out[family] = str(path)
    return out


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Seeded random 512-d vectors for every prompt of PROMPTS (plus one unused prompt)."""
    gen = torch.Generator().manual_seed(1)
    words = ["red disc", "disc_red", "solid square", "hexagon", "unused prompt"]
    path = tmp_path_factory.mktemp("emb") / "embeddings.pt"
    torch.save({w: torch.randn(512, generator=gen) for w in words}, path)
    return str(path)


@pytest.fixture(scope="module")
def prompts_yaml(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("prompts") / "prompts.yaml"
    path.write_text(yaml.safe_dump({**PROMPTS, **{c: "" for c in UNPROMPTED}}))
    return str(path)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_class_scores_as_the_max_over_its_prompts(family: str) -> None:
    from yolo_kd.teacher import FrozenTeacher
    from yolo_kd.vocabulary import Vocabulary, apply_vocabulary

    vectors = torch.randn(3, 512, generator=torch.Generator().manual_seed(2))
    base = _build(family)
    grouped = apply_vocabulary(copy.deepcopy(base), Vocabulary({"a": ["p", "q"], "b": ["r"], "c": []}, vectors))
    single = apply_vocabulary(copy.deepcopy(base), Vocabulary({"p": ["p"], "q": ["q"], "r": ["r"]}, vectors))
    assert grouped.names == {0: "a", 1: "b"} and grouped.task == "detect"
    images = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(3))
    g = FrozenTeacher(grouped, torch.device("cpu"), amp=False)(images)
    s = FrozenTeacher(single, torch.device("cpu"), amp=False)(images)
    assert g["scores"].shape[1] == 2 and g["pred"].shape[1] == 4 + 2  # a detector of 2 classes, no mask channels
    assert len(g["feats"]) == 3  # the neck maps only, not YOLOE's appended class embeddings
    torch.testing.assert_close(g["scores"][:, 0], s["scores"][:, :2].amax(1))
    torch.testing.assert_close(g["scores"][:, 1], s["scores"][:, 2])
    torch.testing.assert_close(g["boxes"], s["boxes"])


def test_prompts_by_class() -> None:
    from yolo_kd.config import KDConfigError
    from yolo_kd.vocabulary import class_prompts

    got = class_prompts(["hardhat", "person"], {"Hard Hat": "hard hat, safety helmet, hard hat", 1: ["human"]})
    assert got == {"hardhat": ["hard hat", "safety helmet"], "person": ["human"]}
    assert class_prompts(["a", "b"], None) == {"a": ["a"], "b": ["b"]}
    assert class_prompts([0, 1], None) == {"0": ["0"], "1": ["1"]}  # names by number are prompted as text
    with pytest.raises(KDConfigError, match="no class 'dog'"):
        class_prompts(["a"], {"dog": "dog"})


def _refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(("family", "encoder"), [("world", "ViT-B-32.pt"), ("yoloe", "mobileclip_blt.ts")])
def test_missing_encoder_is_one_line_naming_the_file_and_both_ways(
    family: str, encoder: str, teachers: dict[str, str], data_yaml: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [f"model={teachers[family]}", f"names={data_yaml}"]
    train = ["train", f"teacher={teachers[family]}", f"data={data_yaml}", f"project={tmp_path}", f"imgsz={IMGSZ}"]
    for err in (
        _refused(train, capsys),
        _refused(["embed", *argv, f"out={tmp_path / 'e.pt'}"], capsys),
        _refused(["label", *argv, f"source={Path(data_yaml).parent}", f"out={tmp_path / 'lab'}"], capsys),
    ):
        assert encoder in err and "kd_teacher_embeddings=FILE" in err and "yolo-kd embed" in err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_missing_or_bad_embeddings_are_one_line(
    teachers: dict[str, str], embeddings: str, data_yaml: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train = ["train", f"teacher={teachers['world']}", f"data={data_yaml}", f"project={tmp_path}", f"imgsz={IMGSZ}"]
    err = _refused([*train, f"kd_teacher_embeddings={tmp_path / 'none.pt'}"], capsys)
    assert "none.pt: no such file" in err
    # the file lacks the default prompts (the class names) of the unprompted classes
    err = _refused([*train, f"kd_teacher_embeddings={embeddings}"], capsys)
    assert "has no vector for ['disc_orange'" in err and "yolo-kd embed" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a tensor file")
    assert "not readable" in _refused([*train, f"kd_teacher_embeddings={junk}"], capsys)
    small = tmp_path / "small.npz"
    import numpy as np

    np.savez(small, **{w: np.zeros(8, dtype=np.float32) for w in ["disc_red", "red disc", "solid square", "hexagon"]})
    prompts = tmp_path / "p.yaml"
    prompts.write_text(yaml.safe_dump({**PROMPTS, **{c: "" for c in UNPROMPTED}}))
    err = _refused([*train, f"kd_teacher_embeddings={small}", f"kd_teacher_prompts={prompts}"], capsys)
    assert "vectors of size 8" in err and "takes 512" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt", "p.yaml", "small.npz"]


def test_embed_writes_every_prompt(
    teachers: dict[str, str], data_yaml: str, prompts_yaml: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from yolo_kd import vocabulary
    from yolo_kd.vocabulary import read_embeddings

    seen = {}

    def encoder(model: torch.nn.Module, prompts: list[str], teacher: str) -> torch.Tensor:  # stands in for CLIP
        seen["prompts"] = prompts
        return torch.ones(len(prompts), 512)

    monkeypatch.setattr(vocabulary, "encode_prompts", encoder)
    out = tmp_path / "e.npz"
    argv = ["embed", f"model={teachers['yoloe']}", f"names={data_yaml}", f"out={out}"]
    assert main([*argv, f"prompts={prompts_yaml}"]) == 0
    assert seen["prompts"] == ["red disc", "disc_red", "solid square", "hexagon"]
    assert sorted(read_embeddings(out)) == sorted(seen["prompts"])
    assert main(argv) == 2  # an existing file is never overwritten


def test_embeddings_files_keep_every_prompt_name(tmp_path: Path) -> None:
    from yolo_kd.vocabulary import read_embeddings, write_embeddings

    vectors = {name: torch.full((4,), float(i)) for i, name in enumerate(["file", "allow_pickle", "hard hat"])}
    for out in (tmp_path / "e.npz", tmp_path / "e.pt"):
        write_embeddings(out, vectors)
        got = read_embeddings(out)
        assert sorted(got) == sorted(vectors) and all(torch.equal(got[k], v) for k, v in vectors.items())


def test_prompts_for_a_closed_set_teacher_are_refused(
    tmp_path: Path, data_yaml: str, embeddings: str, capsys: pytest.CaptureFixture
) -> None:
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    model.task = "detect"
    closed = tmp_path / "closed.pt"
    torch.save({"model": model, "train_args": {"imgsz": IMGSZ}}, closed)
    train = ["train", f"teacher={closed}", f"data={data_yaml}", f"project={tmp_path / 'p'}", f"imgsz={IMGSZ}"]
    assert "has fixed classes" in _refused([*train, f"kd_teacher_embeddings={embeddings}"], capsys)


def _student_is_plain(best: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, os
        os.environ["YOLO_OFFLINE"] = "1"
        sys.modules["yolo_kd"] = None  # any import of yolo_kd now raises ImportError
        import torch
        from ultralytics import YOLO
        model = YOLO({str(best)!r})
        assert type(model.model).__name__ == "DetectionModel", type(model.model)
        assert not hasattr(model.model, "txt_feats") and not hasattr(model.model, "pe")
        model.predict(__import__("numpy").zeros(({IMGSZ}, {IMGSZ}, 3), dtype="uint8"), imgsz={IMGSZ}, verbose=False)
        ckpt = torch.load({str(best)!r}, map_location="cpu", weights_only=False)
        kd = repr(ckpt["kd"])
        assert "tensor" not in kd.lower(), kd  # hash and prompts only: no embedding reaches the student's file
        print("OK", sum(p.numel() for p in model.model.parameters()))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split("OK")[1].split()[0]) < 3.5e6  # a YOLOv8n, nothing of the teacher


@pytest.mark.slow
def test_world_teacher_distils_resumes_and_records_its_vocabulary(
    teachers: dict[str, str], embeddings: str, prompts_yaml: str, data_yaml: str, tmp_path: Path
) -> None:
    from yolo_kd import KDDetectionTrainer
    from yolo_kd.checkpoint import read_kd_record

    from .conftest import tiny_trainer

    class Stop(Exception):
        pass

    def stop(trainer: KDDetectionTrainer) -> None:
        raise Stop

    keys = {"kd_teacher_embeddings": embeddings, "kd_teacher_prompts": prompts_yaml, "kd": "full"}
    trainer = tiny_trainer(data_yaml, teachers["world"], tmp_path, "r", epochs=2, val=False, **keys)
    trainer.add_callback("on_model_save", stop)
    with pytest.raises(Stop):
        trainer.train()
    assert [s for s, _ in trainer.class_pairs] == [0, 2, 6]  # disc_red, square_solid, hexagon: by prompt
    last = tmp_path / "r" / "weights" / "last.pt"
    record = read_kd_record(last)
    vocab = record["vocabulary"]
    assert vocab["prompts"]["disc_red"] == ["red disc", "disc_red"] and vocab["prompts"]["plus"] == []
    assert len(vocab["sha256"]) == 64 and record["config"]["kd_teacher_vocab_sha256"] == vocab["sha256"]
    assert main(["train", f"resume={last}"]) == 0
    best = tmp_path / "r" / "weights" / "best.pt"
    assert read_kd_record(best)["vocabulary"] == vocab  # the resumed epoch used the same vocabulary
    _student_is_plain(best)
    # a resume whose embeddings differ is refused, in one line, before training
    other = tmp_path / "other.pt"
    table = torch.load(embeddings)
    torch.save({k: v + 1 for k, v in table.items()}, other)
    assert main(["train", f"resume={last}", f"kd_teacher_embeddings={other}"]) == 2


@pytest.mark.slow
def test_yoloe_teacher_labels_a_folder_then_teaches_with_unlabeled(
    teachers: dict[str, str], embeddings: str, prompts_yaml: str, data_yaml: str, tmp_path: Path
) -> None:
    from yolo_kd.label import label_folder

    source = tmp_path / "raw"  # raw images: copies without labels, not the validation images themselves
    shutil.copytree(Path(data_yaml).parent / "tiny" / "images" / "val", source)
    summary = label_folder(
        teachers["yoloe"], source, tmp_path / "lab", conf=0.001, names=data_yaml, prompts=prompts_yaml,
        embeddings=embeddings,
    )  # fmt: skip
    labelled = yaml.safe_load(Path(summary["yaml"]).read_text())
    assert labelled["names"] == yaml.safe_load(Path(data_yaml).read_text())["names"]  # the student's classes
    lines = [line for f in (tmp_path / "lab" / "labels").rglob("*.txt") for line in f.read_text().splitlines()]
    classes = {int(line.split()[0]) for line in lines}
    assert lines  # an untrained teacher at conf=0.001 still boxes something
    assert classes <= {0, 2, 6}  # only the prompted classes, by the student's indices
    project = tmp_path / "p"
    argv = [
        "train", "model=yolov8n.yaml", f"teacher={teachers['yoloe']}", f"data={data_yaml}", f"unlabeled={source}",
        f"kd_teacher_embeddings={embeddings}", f"kd_teacher_prompts={prompts_yaml}", "epochs=1", f"imgsz={IMGSZ}",
        "batch=8", "workers=0", "plots=False", f"project={project}", "name=u",
    ]  # fmt: skip
    assert main(argv) == 0
    _student_is_plain(project / "u" / "weights" / "best.pt")


def test_an_open_vocabulary_teacher_needs_the_students_names(
    teachers: dict[str, str], embeddings: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    nameless = tmp_path / "nameless.yaml"
    nameless.write_text("train: images\nval: images\n")  # a data YAML without the class names
    project = tmp_path / "p"
    train = ["train", f"teacher={teachers['world']}", f"kd_teacher_embeddings={embeddings}", f"project={project}"]
    err = _refused([*train, f"data={nameless}"], capsys)
    assert "prompted with the student's class names" in err and "nameless.yaml" in err
    assert not project.exists()


def test_cross_head_kd_with_an_open_vocabulary_teacher_is_refused(
    teachers: dict[str, str], embeddings: str, data_yaml: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train = ["train", f"teacher={teachers['world']}", f"kd_teacher_embeddings={embeddings}", f"data={data_yaml}"]
    err = _refused([*train, "kd_cross=1.0", f"project={tmp_path}", f"imgsz={IMGSZ}"], capsys)
    assert "kd_cross=1.0" in err and "open-vocabulary" in err and "fixed-class Detect head" in err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written

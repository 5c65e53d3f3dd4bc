"""INT8 quantization-aware distillation (``quantize=8``, Ultralytics' QAT through ModelOpt) and its INT8 exports."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from yolo_kd import KDDetectionTrainer
from yolo_kd.cli import main
from yolo_kd.qat import missing_modules

from .conftest import IMGSZ, tiny_trainer

needs_modelopt = pytest.mark.skipif(
    bool(missing_modules()), reason="nvidia-modelopt not installed (pip install -e '.[qat]'); QAT cannot run"
)
needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="export extra not installed (pip install -e '.[export]')"
)


def _is_qat(model: torch.nn.Module) -> bool:
    """Whether a model carries fake quantization (ModelOpt's quantizer modules)."""
    return any(type(m).__name__ == "TensorQuantizer" for m in model.modules())


def _weight_ranges_match_weights(model: torch.nn.Module, weights: torch.Tensor | None = None) -> bool:
    """Whether the first conv's calibrated per-channel weight range is its weights' absolute maximum.

    ModelOpt calibrates a weight range once, when the quantizers are inserted, and keeps it fixed; so the range equals
    the weights' maximum only if the weights were final (the teacher's or the loaded student's) at that moment.
    """
    conv = model.model[0].conv
    w = conv.weight if weights is None else weights
    amax = conv.weight_quantizer.amax.flatten().float()
    return torch.allclose(amax, w.detach().float().abs().amax(dim=(1, 2, 3)), rtol=1e-3)


def _quantizer_ranges(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if "quantizer" in k}


@pytest.fixture(scope="module")
def qat_run(data_yaml: str, teacher_pt: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-epoch QAT + KD run (every KD term) interrupted after epoch 1 and resumed; what it saw along the way."""
    if missing_modules():
        pytest.skip("nvidia-modelopt not installed (pip install -e '.[qat]'); QAT cannot run")
    from yolo_kd.teacher import FrozenTeacher

    project = tmp_path_factory.mktemp("qat")
    seen: dict[str, Any] = {"teacher_calls": 0}
    forward = FrozenTeacher.forward

    def counted(self: FrozenTeacher, images: torch.Tensor) -> Any:
        seen["teacher_calls"] += 1
        return forward(self, images)

    def on_train_start(trainer: KDDetectionTrainer) -> None:
        student, teacher = trainer.model, trainer.kd.teacher.model
        seen["calls_before_training"] = seen["teacher_calls"]  # calibration ran no teacher pass
        seen["student_qat"], seen["teacher_qat"] = _is_qat(student), _is_qat(teacher)
        seen["teacher_dtypes"] = {p.dtype for p in teacher.parameters()}
        seen["student_init"] = trainer.student_init
        seen["ranges_of_final_init"] = _weight_ranges_match_weights(student)
        # every KD term alone sends gradients into the fake-quantized student (straight-through estimator)
        batch = trainer.preprocess_batch(next(iter(trainer.train_loader)))
        student.train()
        loss, _ = student.loss(batch)
        quantized = [m.conv.weight for m in (student.model[0], student.model[1]) if m.conv.weight_quantizer.is_enabled]
        seen["quantized_layers"] = len(quantized)
        seen["kd_grads"] = {}
        for name, term in zip(("kd_cls", "kd_box", "kd_feat"), loss[-4:-1]):  # the last term, kd_cross, is off
            grads = torch.autograd.grad(term, quantized, retain_graph=True, allow_unused=True)
            seen["kd_grads"][name] = float(term) > 0 and all(g is not None and g.abs().sum() > 0 for g in grads)

    class Crash(Exception):
        pass

    def crash(trainer: KDDetectionTrainer) -> None:
        raise Crash

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FrozenTeacher, "forward", counted)
        trainer = tiny_trainer(data_yaml, teacher_pt, project, "run", quantize=8, kd="full", epochs=2)
        trainer.add_callback("on_train_start", on_train_start)
        trainer.add_callback("on_model_save", crash)
        with pytest.raises(Crash):
            trainer.train()

    last = project / "run" / "weights" / "last.pt"
    seen["saved_ranges"] = {k: v.clone() for k, v in torch.load(last, weights_only=False)["modelopt"]["ranges"].items()}

    def on_pretrain_routine_end(trainer: KDDetectionTrainer) -> None:
        seen["resumed_qat"] = _is_qat(trainer.model)
        seen["resumed_ranges"] = _quantizer_ranges(trainer.model)
        seen["resumed_teacher"] = trainer.kd is not None and not _is_qat(trainer.kd.teacher.model)

    from ultralytics import YOLO

    model = YOLO(str(last))
    model.add_callback("on_pretrain_routine_end", on_pretrain_routine_end)
    model.train(trainer=KDDetectionTrainer, resume=True)
    seen["run"] = project / "run"
    return seen


@pytest.mark.slow
@needs_modelopt
def test_qat_is_inserted_after_the_teacher_init_and_the_teacher_stays_fp32(qat_run: dict[str, Any]) -> None:
    assert qat_run["student_qat"] and not qat_run["teacher_qat"]
    assert qat_run["teacher_dtypes"] == {torch.float32}
    assert qat_run["student_init"] == "the teacher's weights"
    assert qat_run["ranges_of_final_init"], "quantizers were calibrated before the student's weights were final"
    assert qat_run["calls_before_training"] == 0, "calibration ran the teacher"


@pytest.mark.slow
@needs_modelopt
def test_every_kd_term_reaches_the_quantized_student(qat_run: dict[str, Any]) -> None:
    assert qat_run["quantized_layers"] == 2
    assert qat_run["kd_grads"] == {"kd_cls": True, "kd_box": True, "kd_feat": True}


@pytest.mark.slow
@needs_modelopt
def test_resume_restores_the_learnt_quantizers(qat_run: dict[str, Any]) -> None:
    assert qat_run["resumed_qat"] and qat_run["resumed_teacher"]
    saved, resumed = qat_run["saved_ranges"], qat_run["resumed_ranges"]
    assert saved and set(saved) <= set(resumed)
    assert all(torch.allclose(v.float(), resumed[k].float()) for k, v in saved.items()), "quantizers recalibrated"
    rows = (qat_run["run"] / "results.csv").read_text().splitlines()
    assert len(rows) == 3  # header and both epochs


@pytest.mark.slow
@needs_modelopt
def test_qat_checkpoint_is_plain_ultralytics(qat_run: dict[str, Any], data_yaml: str, tmp_path: Path) -> None:
    best = tmp_path / "best.pt"
    shutil.copy(qat_run["run"] / "weights" / "best.pt", best)
    script = textwrap.dedent(
        f"""
        import sys, os
        os.environ["YOLO_OFFLINE"] = "1"
        sys.modules["yolo_kd"] = None  # any import of yolo_kd now raises ImportError
        import numpy, onnx
        from ultralytics import YOLO
        model = YOLO({str(best)!r})
        assert any(type(m).__name__ == "TensorQuantizer" for m in model.model.modules()), "quantizers not restored"
        assert not any("teacher" in k or "connector" in k for k in model.model.state_dict()), "KD state in student"
        assert getattr(model.model, "criterion", None) is None
        model.predict(numpy.zeros(({IMGSZ}, {IMGSZ}, 3), dtype="uint8"), imgsz={IMGSZ}, verbose=False)
        m = model.val(data={data_yaml!r}, imgsz={IMGSZ}, batch=8, plots=False, verbose=False)
        f = model.export(format="onnx", imgsz={IMGSZ})
        ops = [n.op_type for n in onnx.load(f).graph.node]
        print("OK", ops.count("QuantizeLinear"), m.box.map)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split("OK")[1].split()[0]) > 50  # Q/DQ around every quantized conv


@pytest.mark.slow
@needs_modelopt
@needs_onnxruntime
def test_int8_onnx_export_uses_the_learnt_ranges(
    qat_run: dict[str, Any], data_yaml: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx
    from onnx import numpy_helper
    from ultralytics.engine.exporter import Exporter

    def no_calibration(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a QAT checkpoint was calibrated afresh")

    monkeypatch.setattr(Exporter, "get_int8_calibration_dataloader", no_calibration)
    monkeypatch.setattr("ultralytics.utils.export.onnx.onnx_int8_quantize", no_calibration)
    best = tmp_path / "best.pt"
    shutil.copy(qat_run["run"] / "weights" / "best.pt", best)
    assert main(["export", f"model={best}", "format=onnx", "quantize=8", f"data={data_yaml}", "runs=3"]) == 0
    report = json.loads((tmp_path / "best_onnx_int8_export_report.json").read_text())
    assert report["passed"] and report["precision"] == "int8" and report["int8_ranges"] == "learnt in QAT"
    assert set(report["mAP50-95"]) == {"pytorch", "exported", "drop"}
    assert all(0 <= report["mAP50-95"][k] <= 1 for k in ("pytorch", "exported"))
    assert report["size_mb"]["exported"] > 1 and report["latency_ms_median"]["exported"] > 0
    assert "INT8 ranges: learnt in QAT" in (tmp_path / "best_onnx_int8_export_report.md").read_text()

    # every activation range in the file is one learnt in training (amax / 127), none recalibrated
    graph = onnx.load(report["exported"]).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts = {
        o: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    scales = sorted(
        float({**inits, **consts}[n.input[1]])
        for n in graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and "input_quantizer" in n.name
    )
    ckpt = torch.load(best, weights_only=False)
    learnt = sorted(float(v) / 127 for k, v in ckpt["modelopt"]["ranges"].items() if "input_quantizer" in k)
    assert scales and len(scales) <= len(learnt)
    assert all(any(abs(s - t) <= 1e-6 + 1e-4 * t for t in learnt) for s in scales), (scales[:5], learnt[:5])


@pytest.mark.slow
@needs_modelopt
@needs_onnxruntime
def test_int8_openvino_export_keeps_the_learnt_ranges(
    qat_run: dict[str, Any], data_yaml: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("OpenVINO not installed (pip install -e .[export]); CI installs it")
    import openvino as ov
    from ultralytics.engine.exporter import Exporter

    def no_calibration(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a QAT checkpoint was calibrated afresh")

    monkeypatch.setattr(Exporter, "get_int8_calibration_dataloader", no_calibration)
    best = tmp_path / "best.pt"
    shutil.copy(qat_run["run"] / "weights" / "best.pt", best)
    assert main(["export", f"model={best}", "format=openvino", f"data={data_yaml}", "runs=3"]) == 0
    report = json.loads((tmp_path / "best_openvino_int8_export_report.json").read_text())
    assert report["passed"] and report["precision"] == "int8" and report["int8_ranges"] == "learnt in QAT"
    assert report["exported"].endswith("best_int8_openvino_model")
    assert all(0 <= report["mAP50-95"][k] <= 1 for k in ("pytorch", "exported"))
    assert report["latency_ms_median"]["exported"] > 0
    ops = [op.get_type_name() for op in ov.Core().read_model(str(Path(report["exported"]) / "best.xml")).get_ops()]
    assert ops.count("FakeQuantize") > 50  # the Q/DQ ranges, run in INT8 by OpenVINO's CPU plugin
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt",
        "best_int8_openvino_model",
        "best_openvino_int8_export_report.json",
        "best_openvino_int8_export_report.md",
    ]


@pytest.mark.slow
@needs_modelopt
def test_qat_starts_from_a_distilled_fp32_student(
    kd_run: Path, data_yaml: str, teacher_pt: str, tmp_path: Path
) -> None:
    student = kd_run / "weights" / "best.pt"
    distilled = torch.load(student, weights_only=False)["model"].model[0].conv.weight.float()
    seen: dict[str, Any] = {}

    def on_train_start(trainer: KDDetectionTrainer) -> None:
        seen["init"], seen["qat"] = trainer.student_init, _is_qat(trainer.model)
        seen["from_distilled"] = _weight_ranges_match_weights(trainer.model, distilled)
        seen["teacher"] = trainer.kd is not None and not _is_qat(trainer.kd.teacher.model)

    trainer = tiny_trainer(data_yaml, teacher_pt, tmp_path, "qat2", model=str(student), quantize=8, val=False)
    trainer.add_callback("on_train_start", on_train_start)
    trainer.train()
    assert seen == {"init": "its own weights", "qat": True, "from_distilled": True, "teacher": True}
    assert torch.load(tmp_path / "qat2" / "weights" / "last.pt", weights_only=False)["modelopt"]


def test_qat_without_modelopt_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "modelopt", None)  # as if nvidia-modelopt were not installed
    data, project = tmp_path / "d.yaml", tmp_path / "p"
    data.write_text("train: images\nval: images\nnames: {0: a}\n")
    argv = ["train", "model=yolov8n.yaml", "teacher=t.pt", f"data={data}", "quantize=8", f"project={project}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install -e '.[qat]'" in err and "nvidia-modelopt" in err, err
    assert not project.exists()


@pytest.fixture(scope="module")
def plain_and_qat_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained student checkpoint, and the same marked as a QAT one (refusals come before anything loads it)."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("ckpts")
    plain = folder / "plain.pt"
    YOLO("yolov8n.yaml").save(plain)
    ckpt = torch.load(plain, weights_only=False)
    torch.save({**ckpt, "modelopt": {"modelopt": "state", "ranges": {}}}, folder / "qat.pt")
    return plain, folder / "qat.pt"


def _qat(argv: list[str], message: str) -> Any:
    return pytest.param(True, argv, message, marks=needs_modelopt)  # loading its quantizers needs ModelOpt


@pytest.mark.parametrize(
    "qat, argv, message",
    [
        (False, ["format=torchscript", "quantize=8", "data=d.yaml"], "format=torchscript does not export quantize=8"),
        (False, ["format=litert", "quantize=16"], "format=litert does not export quantize=16"),
        (False, ["format=onnx", "quantize=8"], "format=onnx quantize=8 calibrates on your images"),
        (False, ["format=onnx", "int8=True"], "format=onnx quantize=8 calibrates on your images"),  # deprecated alias
        # formats Ultralytics makes INT8 whatever is asked calibrate too: no sample set is downloaded in place of data=
        (False, ["format=edgetpu"], "format=edgetpu quantize=8 calibrates on your images"),
        (False, ["format=qnn"], "format=qnn quantize=w8a16 calibrates on your images"),
        (False, ["format=rknn", "name=rv1106"], "format=rknn quantize=8 calibrates on your images"),  # INT8-only chip
        (False, ["format=onnx", "quantize=w8a16", "data=d.yaml"], "format=onnx does not export quantize=w8a16"),
        (False, ["format=onnx", "quantize=int4"], "quantize=int4 is invalid"),
        (False, ["format=MLModel"], "format=mlmodel (CoreML's legacy file) is not exported here"),
        (False, ["format=onnx", "runs=abc"], "runs='abc': give a whole number of at least 1"),
        _qat(["format=litert", "quantize=8"], "format=litert cannot carry a QAT checkpoint's learnt INT8 ranges"),
        _qat(["format=torchscript"], "format=torchscript cannot carry a QAT checkpoint's learnt INT8 ranges"),
        _qat(["format=onnx", "quantize=16"], "a QAT checkpoint exports INT8 only"),
    ],
)
def test_export_precision_refusals(
    plain_and_qat_checkpoints: tuple[Path, Path],
    qat: bool,
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture,
) -> None:
    ckpt = plain_and_qat_checkpoints[qat]
    before = sorted(ckpt.parent.iterdir())
    assert main(["export", f"model={ckpt}", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert sorted(ckpt.parent.iterdir()) == before


@pytest.mark.parametrize(
    "argv, passed",
    [
        (["format=edgetpu"], {"quantize": 8, "data": "d.yaml"}),  # INT8 whatever is asked: calibrated on data=
        (["format=onnx", "quantize=8"], {"quantize": 8, "data": "d.yaml"}),
        (["format=coreml", "quantize=8"], {"quantize": 8}),  # weight-only INT8: Ultralytics refuses data= there
        (["format=torchscript"], {"quantize": None}),
    ],
)
def test_data_reaches_the_exporter_only_where_it_calibrates(
    plain_and_qat_checkpoints: tuple[Path, Path],
    argv: list[str],
    passed: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from ultralytics import YOLO

    calls: list[dict[str, Any]] = []

    def record(self: Any, **kwargs: Any) -> str:
        calls.append(kwargs)
        raise RuntimeError("recorded, not exported")

    monkeypatch.setattr(YOLO, "export", record)
    assert main(["export", f"model={plain_and_qat_checkpoints[0]}", "data=d.yaml", *argv]) == 2
    assert "recorded, not exported" in capsys.readouterr().err
    assert {k: calls[0].get(k) for k in ("quantize", "data") if k in calls[0]} == passed


def test_the_deprecated_precision_flags_map_onto_quantize() -> None:
    from yolo_kd.export import export_precision

    assert export_precision(int8=True) == 8 and export_precision(half=True) == 16
    assert export_precision(quantize="fp16") == 16 and export_precision() is None
    assert export_precision(quantize=32, int8=True) == 32  # an explicit quantize= wins, as in Ultralytics

"""yolo-kd export: Ultralytics' exporter plus verification, and its refusals."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from yolo_kd.cli import main

pytestmark = pytest.mark.slow  # end-to-end: a KD run, export or demo


@pytest.fixture()
def student(kd_run: Path, tmp_path: Path) -> Path:
    """A copy of the distilled student, so exports land in a folder of this test's own."""
    dst = tmp_path / "student.pt"
    shutil.copy(kd_run / "weights" / "best.pt", dst)
    return dst


def _export(student: Path, data_yaml: str, fmt: str, *extra: str) -> dict:
    assert main(["export", f"model={student}", f"format={fmt}", f"data={data_yaml}", "runs=3", *extra]) == 0
    report = json.loads(next(student.parent.glob("*_export_report.json")).read_text())
    assert report["passed"] and report["precision"] == "fp32"
    assert Path(report["exported"]).exists() and report["size_mb"]["exported"] > 1
    assert report["latency_ms_median"]["exported"] > 0
    return report


def test_onnx_export_is_verified(student: Path, data_yaml: str) -> None:
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("export extra not installed (pip install -e .[export]); CI installs it")
    report = _export(student, data_yaml, "onnx")
    assert report["max_abs_output_diff"] < 1e-2  # raw decoded outputs, pixel units
    assert abs(report["mAP50-95"]["drop"]) <= 0.005


def test_torchscript_export_is_verified(student: Path, data_yaml: str) -> None:
    # a format whose exporter takes no data= argument, at a size off the stride (verified at the size exported)
    report = _export(student, data_yaml, "torchscript", "imgsz=80")
    assert report["imgsz"] == 96
    assert report["exported"].endswith(".torchscript") and abs(report["mAP50-95"]["drop"]) <= 0.005


def test_the_export_size_is_rounded_up_to_the_stride_as_ultralytics_exports_it() -> None:
    from yolo_kd.export import canonical_format, export_size

    assert export_size(80, 32) == 96 and export_size(64, 32) == 64
    assert canonical_format("TFLite") == "litert" and canonical_format("trt") == "engine"
    assert canonical_format("mlpackage") == "coreml" and canonical_format("Vitis") == "xilinx"


def test_litert_export_is_verified(student: Path, data_yaml: str) -> None:
    if importlib.util.find_spec("ai_edge_litert") is None or importlib.util.find_spec("litert_torch") is None:
        pytest.skip("LiteRT packages not installed (pip install -e .[export]); CI installs them")
    report = _export(student, data_yaml, "litert")
    assert report["exported"].endswith(".tflite")
    # OpenVINO's CPU plugin computes in bf16 where the CPU has it (INFERENCE_PRECISION_HINT; this machine's AMX does),
    # so raw outputs are compared at bf16 precision: within 5% of the image size, against the tens of pixels a wrong
    # layout or preprocessing gives. The mAP check in _export (report["passed"]) stays the fp32 one.
    assert report["max_abs_output_diff"] < 0.05 * report["imgsz"]
    assert abs(report["mAP50-95"]["drop"]) <= 0.005


def test_openvino_export_is_verified(student: Path, data_yaml: str) -> None:
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("OpenVINO not installed (pip install -e .[export]); CI installs it")
    report = _export(student, data_yaml, "openvino")
    assert report["exported"].endswith("_openvino_model")
    # OpenVINO's CPU plugin computes in bf16 where the CPU has it (INFERENCE_PRECISION_HINT; this machine's AMX does),
    # so raw outputs are compared at bf16 precision: within 5% of the image size, against the tens of pixels a wrong
    # layout or preprocessing gives. The mAP check in _export (report["passed"]) stays the fp32 one.
    assert report["max_abs_output_diff"] < 0.05 * report["imgsz"]


@pytest.mark.parametrize("fmt", ["onnx", "litert", "openvino"])
def test_int8_export_of_the_fp32_student_is_calibrated_and_reported(student: Path, data_yaml: str, fmt: str) -> None:
    modules = {"onnx": ["onnxruntime"], "litert": ["ai_edge_litert", "litert_torch"], "openvino": ["openvino"]}[fmt]
    if any(importlib.util.find_spec(m) is None for m in modules):
        pytest.skip(f"{fmt} packages not installed (pip install -e .[export]); CI installs them")
    from yolo_kd.export import formats

    # this format's fp32 export: the INT8 one has another name, so it is no obstacle and stays as it was
    fp32 = student.parent / f"{student.stem}{formats()[fmt]}"
    earlier = fp32 / "model.xml" if fp32.suffix == "" else fp32  # OpenVINO exports a folder
    earlier.parent.mkdir(exist_ok=True)
    earlier.write_bytes(b"the fp32 export")
    argv = ["export", f"model={student}", f"format={fmt}", "quantize=8", f"data={data_yaml}", "runs=3"]
    assert main(argv) == 0
    assert earlier.read_bytes() == b"the fp32 export"
    report = json.loads((student.parent / f"student_{fmt}_int8_export_report.json").read_text())
    assert report["passed"] and report["precision"] == "int8"
    assert report["int8_ranges"] == f"calibrated on {data_yaml}"
    assert all(0 <= report["mAP50-95"][k] <= 1 for k in ("pytorch", "exported"))  # INT8 next to the fp32 student
    assert Path(report["exported"]).exists() and report["size_mb"]["exported"] > 0
    assert report["latency_ms_median"]["exported"] > 0 and report["latency_device"] == "cpu"
    if fmt == "litert":  # the box decode left in float by default: boxes keep their precision, the rest is INT8
        from yolo_kd.compat import litert_box_tail_dtype

        assert report["int8_box_tail"] == "float" and litert_box_tail_dtype(report["exported"]) == "float32"
    else:
        assert report["int8_box_tail"] is None


def test_litert_int8_box_tail_int16_and_a_rule_that_matches_nothing(
    student: Path, data_yaml: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    if any(importlib.util.find_spec(m) is None for m in ("ai_edge_litert", "litert_torch", "ai_edge_quantizer")):
        pytest.skip("LiteRT packages not installed (pip install -e .[export]); CI installs them")
    from yolo_kd import compat

    argv = ["export", f"model={student}", "format=litert", "quantize=8", f"data={data_yaml}", "runs=3"]
    assert main([*argv, "int8_box_tail=int16"]) == 0
    report = json.loads((student.parent / "student_litert_int8_export_report.json").read_text())
    assert report["int8_box_tail"] == "int16" and compat.litert_box_tail_dtype(report["exported"]) == "int16"

    # a litert-torch that names its tensors otherwise: the rule matches nothing, and the export is refused, not
    # shipped with int8 boxes under a report that says float
    monkeypatch.setattr(compat, "LITERT_BOX_TAIL", r"no tensor is called this")
    before = sorted(student.parent.iterdir())
    assert main([*argv, "overwrite=True"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the exporter's own progress output
    assert last.startswith("yolo-kd: error: int8_box_tail=float: the exported boxes are int8")
    assert sorted(student.parent.iterdir()) == before  # the int16 export and its report stay


def _refused(argv: list[str], folder: Path, capsys: pytest.CaptureFixture) -> str:
    before = sorted(folder.iterdir())
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert sorted(folder.iterdir()) == before, "files were left behind"
    return err


def test_bad_requests_are_refused_in_one_line(student: Path, data_yaml: str, capsys: pytest.CaptureFixture) -> None:
    folder = student.parent
    assert "format=pdf is unknown" in _refused([f"model={student}", "format=pdf"], folder, capsys)
    junk = folder / "junk.pt"
    junk.write_text("no checkpoint here")
    assert "not an Ultralytics checkpoint" in _refused([f"model={junk}", "format=onnx"], folder, capsys)
    assert "no such checkpoint" in _refused([f"model={folder / 'nope.pt'}", "format=onnx"], folder, capsys)
    assert "format=onnx quantize=8 calibrates on your images" in _refused(
        [f"model={student}", "format=onnx", "quantize=8"], folder, capsys
    )
    if not __import__("torch").cuda.is_available():
        assert "needs a CUDA GPU" in _refused([f"model={student}", "format=engine"], folder, capsys)
    onnx = [f"model={student}", "format=onnx", f"data={data_yaml}"]
    assert "nms=True: yolo-kd verifies" in _refused([*onnx, "nms=True"], folder, capsys)
    assert "imgsz=[64, 96]: give one whole number" in _refused([*onnx, "imgsz=[64,96]"], folder, capsys)
    if not __import__("torch").cuda.is_available():  # Ultralytics' alias of engine, checked as engine
        assert "needs a CUDA GPU" in _refused([f"model={student}", "format=TensorRT"], folder, capsys)
    assert "batch=4: a static batch other than 1" in _refused([*onnx, "batch=4"], folder, capsys)
    onnx8 = [f"model={student}", "format=onnx", "quantize=8", f"data={data_yaml}"]
    assert "int8_box_tail= applies to full-INT8 LiteRT" in _refused([*onnx8, "int8_box_tail=float"], folder, capsys)
    assert "int8_box_tail='int4': choose one of float, int16, int8" in _refused(
        [*onnx8[:1], "format=litert", *onnx8[2:], "int8_box_tail=int4"], folder, capsys
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("interrupt", [RuntimeError("exporter broke"), KeyboardInterrupt()])
def test_a_failed_export_leaves_the_folder_as_it_was(
    student: Path, data_yaml: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, interrupt
) -> None:
    from ultralytics.engine.model import Model

    earlier = student.with_suffix(".onnx")
    earlier.write_bytes(b"the earlier, good export")
    meanwhile = student.parent / "epoch7.pt"

    def half_export(self: Model, **kwargs) -> str:
        Path(self.ckpt_path).with_suffix(".onnx").write_bytes(b"half an export")
        meanwhile.write_bytes(b"written by a training run in the same folder meanwhile")
        raise interrupt

    monkeypatch.setattr(Model, "export", half_export)
    before = _files(student.parent)
    argv = ["export", f"model={student}", "format=onnx", f"data={data_yaml}", "overwrite=True"]
    if isinstance(interrupt, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            main(argv)
    else:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "export to onnx failed: exporter broke" in err
    after = _files(student.parent)
    assert after.pop("epoch7.pt") == meanwhile.read_bytes()  # another writer's file stays
    assert after == before  # the earlier export untouched, nothing half-made left, no private folder left
    assert sorted(p.name for p in student.parent.iterdir()) == sorted([*before, "epoch7.pt"])


def test_an_earlier_export_is_replaced_only_when_asked(
    student: Path, data_yaml: str, capsys: pytest.CaptureFixture
) -> None:
    earlier = student.with_suffix(".onnx")
    earlier.write_bytes(b"the earlier export")
    err = _refused([f"model={student}", "format=onnx", f"data={data_yaml}"], student.parent, capsys)
    assert f"{earlier} exists" in err and "overwrite=True" in err


def test_a_failed_verification_keeps_its_report_and_nothing_else(
    student: Path, data_yaml: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("export extra not installed (pip install -e .[export]); CI installs it")
    import yolo_kd.export

    monkeypatch.setattr(yolo_kd.export, "FP32_TOLERANCE", -1.0)  # every export now fails its mAP check
    before = set(student.parent.iterdir())
    assert main(["export", f"model={student}", "format=onnx", f"data={data_yaml}", "runs=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing replaced" in err
    new = {p.name for p in set(student.parent.iterdir()) - before}
    assert new == {"student_onnx_export_report_failed.json", "student_onnx_export_report_failed.md"}
    report = json.loads((student.parent / "student_onnx_export_report_failed.json").read_text())
    assert report["passed"] is False and "FAIL" in (student.parent / "student_onnx_export_report_failed.md").read_text()
    # a second failure keeps both reports
    assert main(["export", f"model={student}", "format=onnx", f"data={data_yaml}", "runs=1"]) == 2
    assert (student.parent / "student_onnx_export_report_failed2.json").is_file()

"""KD settings: presets, validation, and no collision with Ultralytics' own keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from ultralytics.cfg import DEFAULT_CFG_DICT

from yolo_kd.config import PRESET_DIR, KDConfig, KDConfigError, kd_keys, load_kd_config, load_recorded_config


def test_default_preset_equals_dataclass_defaults() -> None:
    assert load_kd_config("default") == KDConfig() == load_kd_config(None)


def test_presets_load_and_switch_terms() -> None:
    logit, feature = load_kd_config("logit"), load_kd_config("feature")
    assert logit.kd_cls > 0 and logit.kd_box == 0 and logit.kd_feat == 0
    assert feature.kd_cls == 0 and feature.kd_box == 0 and feature.kd_feat > 0
    assert logit.kd_assign == 0 and feature.kd_assign == 0  # single-term ablations: no teacher-guided assignment
    default, full = load_kd_config("default"), load_kd_config("full")
    assert default.kd_feat == 0 and default.kd_assign == 1 and default.kd_cls > 0 and default.kd_box > 0
    assert full == dataclasses.replace(default, kd_feat=1.0), "full = default + the feature term"
    assert load_kd_config(PRESET_DIR / "logit.yaml") == logit


def test_every_preset_key_is_known() -> None:
    presets = sorted(PRESET_DIR.glob("*.yaml"))
    assert len(presets) >= 3, presets  # default, full, logit at least
    for path in presets:
        assert set(yaml.safe_load(path.read_text())) <= set(KDConfig.field_names()), path


def test_overrides_win_over_preset() -> None:
    cfg = load_kd_config("logit", kd_cls_temp=4, kd_feat_loss="mgd")
    assert cfg.kd_cls_temp == 4.0 and cfg.kd_feat_loss == "mgd" and cfg.kd_feat == 0


def test_kd_keys_never_collide_with_ultralytics() -> None:
    assert not set(kd_keys()) & set(DEFAULT_CFG_DICT), "a KD key shadows an Ultralytics argument"
    assert "distill_model" not in kd_keys() and "dis" not in kd_keys()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kd_cls": -1}, "kd_cls=-1.0 must be >= 0"),
        ({"kd_cls_temp": 0}, "kd_cls_temp=0.0 must be > 0"),
        ({"kd_feat_temp": -2}, "kd_feat_temp=-2.0 must be > 0"),
        ({"kd_feat_loss": "l2"}, "kd_feat_loss='l2' is unknown"),
        ({"kd_feat_loss": ["cwd"]}, "kd_feat_loss=['cwd'] is unknown"),
        ({"kd_box": "big"}, "kd_box='big' must be a number"),
        ({"kd_teacher_amp": "yes"}, "must be True or False"),
        ({"kd_mgd_mask": 1.0}, "kd_mgd_mask=1.0 must be in [0, 1)"),
        ({"kd_final": 1.5}, "kd_final=1.5 must be in [0, 1]"),
        ({"kd_tmep": 2}, "unknown KD key(s) ['kd_tmep']"),
        ({"kd_cls": float("nan")}, "kd_cls=nan must be a finite number"),
        ({"kd_box": float("inf")}, "kd_box=inf must be a finite number"),
        ({"kd_cls_temp": float("inf")}, "kd_cls_temp=inf must be a finite number"),
        ({"kd_box_temp": 1e-30}, "kd_box_temp=1e-30 must be in [0.001, 1000.0]"),
        ({"kd_feat_temp": 1e4}, "kd_feat_temp=10000.0 must be in [0.001, 1000.0]"),
        ({"unlabeled_ratio": 0.99}, "unlabeled_ratio=0.99 must be in (0, 0.95]"),
    ],
)
def test_bad_values_raise_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(KDConfigError) as e:
        load_kd_config(None, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_yaml_nan_and_huge_values_are_refused(tmp_path) -> None:
    path = tmp_path / "kd.yaml"
    path.write_text("kd_cls: .nan\n")
    with pytest.raises(KDConfigError, match="kd_cls=nan must be a finite number"):
        load_kd_config(path)
    path.write_text("kd_box: 1.0e+999\n")  # YAML reads it as a float: inf
    with pytest.raises(KDConfigError, match="kd_box=inf must be a finite number"):
        load_kd_config(path)


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(KDConfigError, match="presets"):
        load_kd_config("nope")


def test_help_rows_document_every_key() -> None:
    rows = KDConfig.help_rows()
    assert [r[0] for r in rows] == list(KDConfig.field_names())
    assert all(doc for _, _, doc in rows)


def test_checkpoints_that_predate_a_key_resume_as_they_were_trained() -> None:
    v1 = {k: v for k, v in load_kd_config("full").to_dict().items() if k != "kd_assign"}  # written before kd_assign
    assert load_recorded_config(v1).kd_assign == 0.0 and load_recorded_config(v1).kd_feat == 1.0
    assert load_recorded_config({**v1, "kd_assign": 0.5}).kd_assign == 0.5  # a recorded value always wins
    old = {k: v for k, v in load_kd_config("default").to_dict().items() if k != "kd_final"}  # written before kd_final
    assert load_recorded_config(old).kd_final == 1.0 and load_kd_config("default").kd_final == 0.0


def test_presets_ship_inside_the_package_and_the_user_facing_copies_are_equal() -> None:
    import yolo_kd

    assert PRESET_DIR.parent == Path(yolo_kd.__file__).resolve().parent  # so a wheel install has them
    shipped = {p.name: p.read_text() for p in PRESET_DIR.glob("*.yaml")}
    copies = {p.name: p.read_text() for p in (Path(__file__).resolve().parents[1] / "configs" / "kd").glob("*.yaml")}
    assert shipped and shipped == copies


def test_settings_ride_in_args_and_args_yaml_is_rewritten_whole(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from yolo_kd.settings import RunSettings, record_in_args

    (tmp_path / "args.yaml").write_text("epochs: 3\n")  # Ultralytics' own, without the KD keys
    args = SimpleNamespace(epochs=3)
    settings = RunSettings(load_kd_config("full"), "/abs/teacher.pt", "abc", torch.nn.Identity())
    record_in_args(args, settings, tmp_path, write=False)
    assert (tmp_path / "args.yaml").read_text() == "epochs: 3\n"  # a DDP worker writes nothing
    assert args.teacher == "/abs/teacher.pt" and args.kd_feat == load_kd_config("full").kd_feat
    record_in_args(args, settings, tmp_path, write=True)
    written = yaml.safe_load((tmp_path / "args.yaml").read_text())
    assert written["epochs"] == 3 and written["teacher"] == "/abs/teacher.pt" and written["kd_cls"] == args.kd_cls
    assert [p.name for p in tmp_path.iterdir()] == ["args.yaml"]

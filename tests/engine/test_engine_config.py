"""TrainConfig: defaults, config files (YAML and TOML), precedence, validation."""

from __future__ import annotations

import pytest
import yaml

from attnguide.engine import (
    TrainConfig,
    config_from_options,
    resolve_config,
    save_config,
)
from attnguide.engine.config import field_help, read_config_file
from attnguide.errors import AttnGuideError
from attnguide.io.checkpoints import save_checkpoint


def test_every_field_has_a_help_comment():
    helps = field_help()
    missing = [f for f in TrainConfig.__dataclass_fields__ if f not in helps]
    assert not missing


def test_precedence_defaults_then_file_then_command_line(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("data: d\nlr: 1e-3\nbatch-size: 8\nepochs: 3\nguidance: ext\n")
    cfg = resolve_config({"epochs": 5, "lr": None}, cfg_file)
    assert cfg.epochs == 5  # command line wins
    assert cfg.lr == pytest.approx(1e-3)  # YAML reads 1e-3 as a string: coerced to float
    assert cfg.batch_size == 8 and cfg.guidance == "ext"  # from the file, dashes accepted
    assert cfg.optimizer == TrainConfig().optimizer  # default


def test_toml_file_with_train_table(tmp_path):
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text('[train]\ndata = "d"\nmodel = "test_resnet"\namp = true\npixel_labels = 20\n')
    cfg = resolve_config({"model": "resnet18"}, cfg_file)
    assert cfg.model == "resnet18" and cfg.amp is True
    assert cfg.pixel_labels == "20"  # counts travel as strings ("10%" too)


def test_unknown_key_and_bad_type_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: d\nepoch: 3\n")
    with pytest.raises(AttnGuideError, match=r"unknown option 'epoch'.*epochs"):
        read_config_file(bad)
    bad.write_text("data: d\nepochs: three\n")
    with pytest.raises(AttnGuideError, match="epochs must be int"):
        read_config_file(bad)
    bad.write_text("data: [unclosed\n")
    with pytest.raises(AttnGuideError, match="not valid YAML"):
        read_config_file(bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        read_config_file(tmp_path / "nope.yaml")


def test_validate_rejects_bad_choices():
    with pytest.raises(AttnGuideError, match="--guidance must be none, auto or a .+.-joined set of self, ext, rrr, bg, swap"):
        TrainConfig(data="d", guidance="full").validate()
    with pytest.raises(AttnGuideError, match="--data"):
        TrainConfig().validate()
    with pytest.raises(AttnGuideError, match="--epochs"):
        TrainConfig(data="d", epochs=0).validate()


def test_saved_config_round_trips(tmp_path):
    cfg = TrainConfig(data="d", lr=0.003, epochs=4, guide_options={"fill": 0.5}, resume="old")
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert text.startswith("# attnguide train")
    again = resolve_config(None, tmp_path / "config.yaml")
    assert again.lr == 0.003 and again.epochs == 4 and again.guide_options == {"fill": 0.5}
    assert again.resume is None  # repeating a run does not resume the old one
    assert yaml.safe_load(text)["resume"] is None


def test_resume_base_sits_between_defaults_and_file(tmp_path):
    run = tmp_path / "run"
    base = TrainConfig(data="d", epochs=2, lr=0.5, batch_size=4, out="elsewhere").to_dict()
    save_checkpoint({"kind": "classifier", "model_name": "resnet18", "config": base}, run / "last.pt")
    cfg_file = tmp_path / "more.yaml"
    cfg_file.write_text("lr: 0.25\n")
    cfg = config_from_options({"resume": str(run), "epochs": 6}, cfg_file)
    assert cfg.epochs == 6  # command line
    assert cfg.lr == 0.25  # file beats the checkpoint's config
    assert cfg.batch_size == 4  # from the checkpoint's config
    assert cfg.out == str(run)  # continue in the checkpoint's folder
    assert cfg.resume == str(run)


def test_one_options_system_for_every_dataclass_command(tmp_path):
    """segment and pseudo-label read config files by the rules of train."""
    from attnguide.engine.options import option_fields, resolve
    from attnguide.engine.segment_config import SegmentConfig
    from attnguide.tasks.pseudo_labels import PseudoLabelConfig

    for cls in (TrainConfig, SegmentConfig, PseudoLabelConfig):
        assert all(f.help for f in option_fields(cls).values()), cls.__name__
    cfg_file = tmp_path / "seg.toml"
    cfg_file.write_text('[segment]\ndata = "d"\nlabels = "gt"\ncrop-size = 64\nlr = "1e-3"\n')
    cfg = resolve(SegmentConfig, {"crop_size": 96, "epochs": None}, cfg_file)
    assert (cfg.crop_size, cfg.lr, cfg.labels) == (96, 1e-3, "gt")  # command line > file
    cfg_file = tmp_path / "seg.yaml"
    cfg_file.write_text("segment:\n  data: d\n  crop_size: many\n")
    with pytest.raises(AttnGuideError, match="crop_size must be int"):
        resolve(SegmentConfig, None, cfg_file)
    cfg_file = tmp_path / "pl.yml"
    cfg_file.write_text("pseudo-label:\n  run: r\n  scales: [1.0, 0.5]\n  flip: off\n")
    cfg = resolve(PseudoLabelConfig, {"data": "d"}, cfg_file)
    assert cfg.validate().scales == (1.0, 0.5) and cfg.flip is False and cfg.run == "r"


def test_segment_resume_base_drops_the_length_the_command_line_replaces(tmp_path):
    from attnguide.engine.segment_config import SegmentConfig, config_from_options

    run = tmp_path / "seg"
    base = SegmentConfig(data="d", labels="gt", iterations=50, crop_size=48).to_dict()
    save_checkpoint({"kind": "segmenter", "config": base}, run / "last.pt")
    cfg = config_from_options({"resume": str(run), "epochs": 3})
    assert (cfg.epochs, cfg.iterations, cfg.crop_size) == (3, None, 48)
    assert cfg.out == str(run) and cfg.resume == str(run)
    save_checkpoint({"config": base, "model_name": "resnet18"}, tmp_path / "cls" / "last.pt")
    with pytest.raises(AttnGuideError, match="not a segmenter"):
        config_from_options({"resume": str(tmp_path / "cls")})


def test_a_segment_run_from_before_the_optimiser_options_resumes_with_sgd(tmp_path):
    from attnguide.engine.segment_config import SegmentConfig, config_from_options

    old = SegmentConfig(data="d", labels="gt", epochs=2).to_dict()
    for key in ("optimizer", "warmup_iterations", "encoder_lr_mult", "class_weights", "label_smoothing"):
        old.pop(key)
    save_checkpoint({"kind": "segmenter", "config": old}, tmp_path / "seg" / "last.pt")
    cfg = config_from_options({"resume": str(tmp_path / "seg")})
    assert (cfg.optimizer, cfg.warmup_iterations, cfg.encoder_lr_mult) == ("sgd", 0, 1.0)
    assert SegmentConfig().optimizer == "adamw"  # new runs get the new defaults


def test_freeze_bn_words_and_the_booleans_of_older_runs(tmp_path):
    """freeze_bn is all / erased / none; config files and checkpoints of runs from when it
    was a boolean still read (true -> all, false -> none)."""
    cfg_file = tmp_path / "old.yaml"
    cfg_file.write_text("data: d\nfreeze_bn: false\n")
    assert resolve_config(None, cfg_file).freeze_bn == "none"
    run = tmp_path / "run"
    base = {**TrainConfig(data="d").to_dict(), "freeze_bn": True}
    save_checkpoint({"kind": "classifier", "model_name": "resnet18", "config": base}, run / "last.pt")
    assert config_from_options({"resume": str(run)}).freeze_bn == "all"
    assert resolve_config({"freeze_bn": "erased"}).freeze_bn == "erased"
    with pytest.raises(AttnGuideError, match="--freeze-bn must be one of auto, all, erased, none, got 'swap'"):
        TrainConfig(data="d", freeze_bn="swap").validate()


def test_freeze_bn_auto_resolves_with_the_guidance():
    """--freeze-bn auto (the default) becomes none where the guidance swaps backgrounds
    (--guidance auto with masks: ext+swap) and all elsewhere; the run's config records the word."""
    from attnguide.engine.config import resolve_auto

    cfg = TrainConfig(data="d", guidance="auto")
    note = resolve_auto(cfg, has_masks=True)
    assert (cfg.guidance, cfg.freeze_bn) == ("ext+swap", "none") and "--freeze-bn none" in note
    for guidance, word in (("self", "all"), ("ext", "all"), ("swap", "none"), ("self+energy+box_swap", "none")):
        cfg = TrainConfig(data="d", guidance=guidance)
        resolve_auto(cfg, has_masks=True)
        assert cfg.freeze_bn == word, guidance
    cfg = TrainConfig(data="d", guidance="auto", freeze_bn="all")
    assert "--freeze-bn" not in resolve_auto(cfg, has_masks=True) and cfg.freeze_bn == "all"

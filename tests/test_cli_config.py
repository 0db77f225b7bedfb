"""--config FILE on every command: the same file rules and precedence as `train`."""

from __future__ import annotations

import pytest

from attnguide.cli.main import app, main


def test_every_command_takes_a_config_file():
    import typer.main

    def walk(command, prefix=""):
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, f"{prefix} {name}".strip())
        else:
            yield prefix, command

    found = dict(walk(typer.main.get_command(app)))
    assert {"train", "segment", "pseudo-label", "predict", "evaluate", "demo", "data scenes"} <= set(found)
    for name, command in found.items():
        assert any("--config" in p.opts for p in command.params), f"{name} has no --config"


def test_config_file_fills_options_and_the_command_line_wins(tmp_path, capsys):
    cfg = tmp_path / "scenes.yaml"
    cfg.write_text("scenes:\n  n-train: 6\n  n_val: 3\n  n-test: 9\n  image-size: 48\n")
    assert main(["data", "scenes", str(tmp_path / "d"), "--config", str(cfg), "--n-test", "4"]) == 0
    assert "6 train, 3 val, 4 test images, 48 px" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("n-trian: 6\n", "unknown option 'n-trian' (did you mean n_train?)"),
    ("n-train: six\n", "n_train"),
])
def test_bad_config_file_is_one_line(tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert main(["data", "scenes", str(tmp_path / "d"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_required_option_may_come_from_the_file(tmp_path, capsys):
    assert main(["evaluate", "--data", str(tmp_path)]) == 2
    assert "missing --pred" in capsys.readouterr().err

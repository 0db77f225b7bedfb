"""`attnguide demo`'s machinery at a tiny scale: results.json's rows and keys, the report's
verdict, wall time and seed, progress lines with the time left, and resume."""

from __future__ import annotations

import io
import json
import warnings

import pytest
import torch
import typer
from rich.console import Console
from typer.testing import CliRunner

from attnguide import AttnGuideError
from attnguide.tasks import demo

pytestmark = pytest.mark.filterwarnings("ignore:layer '.*' gives a .* attention map")

TINY_SCENES = {"n_train": 16, "n_val": 8, "n_test": 8, "image_size": 48}
TINY_CLASSIFIER = {**demo.CLASSIFIER, "model": "test_resnet", "image_size": 48, "layer": "layer3",
                   "epochs": 2, "warmup_epochs": 1, "batch_size": 8}
TINY_SEGMENTER = {**demo.SEGMENTER, "encoder": "resnet18", "crop_size": 32, "epochs": 2, "batch_size": 4}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A finished tiny demo: (its folder, the progress it printed)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(demo, "SCENES", TINY_SCENES)
    mp.setattr(demo, "CLASSIFIER", TINY_CLASSIFIER)
    mp.setattr(demo, "SEGMENTER", TINY_SEGMENTER)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo") / "demo"
    text = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = demo.run_demo(out, seed=3, quiet=True, console=Console(file=text, width=200))
    yield out, result, text.getvalue(), mp
    torch.set_num_threads(threads)
    mp.undo()


def test_results_json_has_one_entry_per_row_with_the_four_numbers(tiny):
    out, result, _, _ = tiny
    rows = json.loads((out / "results.json").read_text())
    assert list(rows) == ["unguided", "guided", "true masks"]
    for name in ("unguided", "guided"):
        for key in demo.KEYS:
            assert 0.0 <= rows[name][key] <= 1.0, (name, key)
    assert 0.0 <= rows["true masks"]["segmenter_miou"] <= 1.0
    assert rows["true masks"]["test_map"] is None and rows["true masks"]["pseudo_miou_crf"] is None
    assert rows == json.loads(json.dumps(result.rows, default=float))
    # the guided classifier ran the library's defaults (auto with masks: ext+swap), the other none
    guided = (out / "runs" / "guided" / "config.yaml").read_text()
    assert "guidance: ext+swap" in guided and "guidance: none" in (out / "runs" / "unguided" / "config.yaml").read_text()


def test_the_unguided_baseline_gets_the_guided_runs_steps(tiny):
    """Equal compute: the labelled images recur in the guided run's batches (more steps an
    epoch), so the unguided run is given its step count, and both rows say so."""
    out, _, _, _ = tiny
    rows = json.loads((out / "results.json").read_text())
    last = {name: json.loads((out / "runs" / name / "metrics.jsonl").read_text().splitlines()[-1])
            for name in ("unguided", "guided")}
    assert rows["unguided"]["steps"] == rows["guided"]["steps"] == last["guided"]["step"]
    assert last["unguided"]["step"] == last["guided"]["step"]
    assert "steps: " in (out / "runs" / "unguided" / "config.yaml").read_text()
    assert rows["guided"]["train_seconds"] > 0
    report = (out / "report.md").read_text()
    assert f"| {rows['guided']['steps']} |" in report and "equal compute" in report


def test_exact_match_at_the_threshold_each_run_chose_on_val(tiny):
    """Besides 0.5, the report scores exact match at the run's val-chosen threshold: the
    checkpoint's, applied to test as `attnguide evaluate --run` does."""
    from attnguide.models.trained import load_model
    from attnguide.tasks.evaluate import evaluate_classifier

    out, _, _, _ = tiny
    rows = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    for name in ("unguided", "guided"):
        run = out / "runs" / name / "last.pt"
        chosen = load_model(run).decision_threshold
        assert rows[name]["decision_threshold"] == chosen
        scored = evaluate_classifier(run, out / "scenes", "test", device="cpu")
        assert rows[name]["test_accuracy_val_threshold"] == pytest.approx(scored["accuracy"])
        assert f"({chosen:.2f})" in report
    assert "test_decision_threshold" not in rows["guided"]  # a threshold chosen on test is not reported


def test_report_opens_with_the_verdict_and_states_time_and_seed(tiny):
    out, result, _, _ = tiny
    rows = json.loads((out / "results.json").read_text())
    lines = (out / "report.md").read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1] == ""
    assert lines[2:5] == demo.verdict(rows)
    assert f"{rows['guided']['test_map']:.3f} against {rows['unguided']['test_map']:.3f}" in lines[2]
    assert f"{rows['true masks']['segmenter_miou']:.3f}" in lines[4] and "Upper bound" in lines[4]
    assert lines[5] == ""
    assert f"in {result.seconds / 60:.1f} minutes" in lines[6] and "seed 3" in lines[6]
    assert "`--guidance auto`" in "\n".join(lines)


def test_verdict_names_what_the_guided_model_did_better_and_the_share_of_the_upper_bound():
    rows = {"unguided": {"test_map": 0.6, "test_cam_miou": 0.25, "pseudo_miou_crf": 0.35, "segmenter_miou": 0.3},
            "guided": {"test_map": 0.6, "test_cam_miou": 0.45, "pseudo_miou_crf": 0.9, "segmenter_miou": 0.6,
                       "test_worst_group_accuracy": 0.3},
            "true masks": {"segmenter_miou": 0.75}}
    first, second, third = demo.verdict(rows)
    assert "worst-group" not in first.split("**")[1]  # not better: the unguided row has no value
    assert "in CAM mIoU, CRF pseudo-label mIoU, segmenter mIoU**" in first  # mAP equal: not better
    assert "test mAP 0.600 against 0.600 (+0.000)" in first and "(+0.200)" in first
    assert "worst-group accuracy (its worst (class, background) group) —," in first  # unguided lacks it
    assert "0.900 against 0.350 (+0.550)" in second and "0.600 against 0.300 (+0.300)" in second
    assert "0.750" in third and "80 % of it" in third
    rows["guided"] = dict.fromkeys(rows["guided"], 0.1)
    assert "beats unguided at equal steps in nothing" in demo.verdict(rows)[0]


def test_progress_per_stage_with_time_left(tiny):
    _, _, text, _ = tiny
    places = []
    for i, stage in enumerate(demo.STAGES, 1):
        assert f"{i}/{len(demo.STAGES)} {stage}" in text
        places.append(text.index(f"{i}/{len(demo.STAGES)} {stage}"))
    assert places == sorted(places)  # the stages run in the order they are numbered
    assert text.count(" left") == len(demo.STAGES) - 1
    assert "seed 3" in text and "--guidance auto" in text


def test_rerun_resumes_and_a_missing_result_is_redone(tiny):
    out, result, _, _ = tiny
    before = json.loads((out / "results.json").read_text())
    (out / "runs" / "seg_gt" / "test_miou.json").unlink()  # as if killed before that score
    mtime = (out / "runs" / "seg_guided" / "last.pt").stat().st_mtime_ns
    text = io.StringIO()
    again = demo.run_demo(out, seed=3, quiet=True, console=Console(file=text, width=200))
    log = text.getvalue()
    assert log.count("found done") == len(demo.STAGES) - 2  # all but the redone score and the report
    assert (out / "runs" / "seg_guided" / "last.pt").stat().st_mtime_ns == mtime
    assert json.loads((out / "results.json").read_text()) == before  # bit-exact resume on CPU
    assert again.seconds < result.seconds


def test_cli_prints_the_verdict_and_the_table(tiny):
    from attnguide.cli.demo import register

    out = tiny[0]
    app = typer.Typer()
    register(app)

    @app.command("other")
    def other() -> None:  # a second command, so that typer keeps the command names
        pass

    result = CliRunner().invoke(app, ["demo", str(out), "--seed", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Guided (the defaults" in result.output and "| true masks (upper bound)" in result.output
    assert "seed 3" in result.output and "report:" in result.output


def test_bad_scale(tmp_path):
    with pytest.raises(AttnGuideError, match="--scale must be > 0"):
        demo.run_demo(tmp_path / "d", scale=0)

"""Options through the one loader from `train --config`, `train --resume --config` and
`experiment`: typed values reach the run; bad keys and values are one line and exit 2."""

from __future__ import annotations

import pytest
from clihelp import assert_one_line_error, run_cli

import rsdml.training.runner as runner
from rsdml.config import TrainConfig
from rsdml.errors import RsdmlError


@pytest.fixture
def captured(monkeypatch):
    """Replace the trainer: record the config (and resume overrides) the CLI hands over."""
    calls: list[dict] = []

    def fake(cfg, resume=None, overrides=None):
        calls.append({"cfg": cfg, "resume": resume, "overrides": overrides})
        return {"checkpoint": "last", "epoch": 0}

    monkeypatch.setattr(runner, "train", fake)
    return calls


def test_train_config_yaml_spellings_reach_the_run_typed(tmp_path, capsys, captured):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 5e-2\nweight_decay: 1e-4\nlabeled_fraction: '0.3'\n"
                   "freeze-backbone: 'no'\neval-every: 5\namp: off\nepochs: '12'\n")
    code, _, err = run_cli(["train", "--config", str(cfg), "--data", "d", "--seed", "3"], capsys)
    assert code == 0, err
    got = captured[0]["cfg"]
    assert (got.lr, got.weight_decay, got.labeled_fraction) == (0.05, 1e-4, 0.3)
    assert got.freeze_backbone is False and got.eval_every == 5 and got.amp == "off"
    assert got.epochs == 12 and got.seed == 3 and got.data == "d"


def test_command_line_overrides_the_file_whatever_its_key_spelling(tmp_path, capsys, captured):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("eval-every: 5\n")
    code, _, err = run_cli(["train", "--config", str(cfg), "--eval-every", "2"], capsys)
    assert code == 0, err
    assert captured[0]["cfg"].eval_every == 2


@pytest.mark.parametrize(
    "text, needles",
    [
        ("eval_evry: 5\n", ["unknown key 'eval_evry'", "did you mean 'eval_every'?"]),
        ("lr: fast\n", ["lr = 'fast' must be a number"]),
        ("freeze_backbone: 'nein'\n", ["must be true or false"]),
        ("epochs: 2.5\n", ["epochs = 2.5 must be a whole number"]),
    ],
)
def test_train_config_bad_key_or_value(text, needles, tmp_path, capsys, captured):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    code, _, err = run_cli(["train", "--config", str(cfg)], capsys)
    assert_one_line_error(code, err, str(cfg), *needles)
    assert not captured


@pytest.fixture
def saved_run(tmp_path):
    """A run folder holding only its config.yaml: enough for resume_config."""
    run = tmp_path / "run"
    run.mkdir()
    TrainConfig(data=str(tmp_path / "data"), out=str(run), epochs=3).save_yaml(run / "config.yaml")
    return run


@pytest.mark.parametrize(
    "text, needles",
    [
        ("eval_evry: 5\n", ["did you mean 'eval_every'?"]),
        ("bogus-key: 1\n", ["unknown key 'bogus-key'"]),
        ("epochs: many\n", ["epochs = 'many' must be a whole number"]),
        ("margin: 0.3\n", ["--margin differ from the saved config.yaml"]),
    ],
)
def test_resume_config_bad_key_or_value(text, needles, saved_run, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    code, _, err = run_cli(["train", "--resume", str(saved_run), "--config", str(cfg)], capsys)
    assert_one_line_error(code, err, *needles)
    assert "AttributeError" not in err


def test_resume_config_accepts_hyphenated_yaml_keys_and_yaml_numbers(saved_run, tmp_path):
    cfg = runner.resume_config(runner.RunFolder(saved_run),
                               {"eval-every": 5, "epochs": "1e1", "margin": "5e-1"}, extend=True)
    assert cfg.eval_every == 5 and cfg.epochs == 10 and cfg.margin == 0.5


def test_resume_with_its_own_config_yaml_is_no_change(saved_run, tmp_path, capsys, monkeypatch):
    """Passing the run's config.yaml back (the file `--config` reuses) changes nothing."""
    seen = {}

    def stop(run, cfg, what):
        seen["cfg"] = cfg
        raise RsdmlError("stop here")

    monkeypatch.setattr(runner, "_open_run_split", stop)
    code, _, err = run_cli(["train", "--resume", str(saved_run), "--config",
                            str(saved_run / "config.yaml"), "--epochs", "4", "--extend"], capsys)
    assert_one_line_error(code, err, "stop here")
    assert seen["cfg"].epochs == 4


@pytest.mark.parametrize(
    "text, needles",
    [
        ("base:\n  data: d\n  eval_evry: 5\n", ["unknown key 'eval_evry'", "'eval_every'"]),
        ("base:\n  data: d\ngrid:\n  lr: [fast]\n", ["lr = 'fast' must be a number"]),
        ("base:\n  data: d\n  freeze-backbone: maybe\n", ["must be true or false"]),
        ("base:\n  data: d\ngrid:\n  metod: [snca]\n", ["did you mean 'method'?"]),
    ],
)
def test_experiment_bad_key_or_value(text, needles, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    code, _, err = run_cli(["experiment", str(grid), "--out", str(tmp_path / "exp")], capsys)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "exp").exists()


def test_experiment_reads_yaml_text_numbers_and_bools(tmp_path):
    from rsdml.training.experiment import load_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text("base:\n  data: d\n  freeze-backbone: 'no'\n  labeled_fraction: '0.3'\n"
                    "grid:\n  lr: [5e-2, 1e-1]\n")
    parsed = load_grid(grid)
    assert parsed.base == {"data": "d", "freeze_backbone": False, "labeled_fraction": 0.3}
    assert parsed.axes == {"lr": [0.05, 0.1]}

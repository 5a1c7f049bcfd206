"""The experiment grid: expansion, shared splits, skip/resume/restart, results files, CLI."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import rsdml.training.experiment as ex
from rsdml.config import TrainConfig
from rsdml.data.split import read_split_csv
from rsdml.errors import RsdmlError
from rsdml.training.experiment import Grid, expand_grid, parse_grid, plan_cells, run_experiment

METHODS = ["hr-s2dml", "nsm-margin", "snca"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rsdml.data.synthetic import make_synthetic_scenes

    root = tmp_path_factory.mktemp("exp-scenes")
    make_synthetic_scenes(root, n_classes=4, per_class=12, size=32, seed=0)
    return root


def _grid(data: Path | str = "/nonexistent", base: dict | None = None, **axes: Any) -> Grid:
    axes = axes or {"method": METHODS[:2], "labeled_fraction": [0.25, 0.5], "seed": [0, 1]}
    return parse_grid({"base": {"data": str(data), "epochs": 1, **(base or {})}, "grid": axes})


class FakeTrain:
    """Stands in for runner.train: records calls, writes the files a run folder would hold."""

    def __init__(self, interrupt: str | None = None, fail: str | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.interrupt = interrupt  # "method=snca frac=0.5 seed=0": killed after its checkpoint
        self.fail = fail  # method that raises a user error

    def metrics(self, cfg: TrainConfig) -> dict[str, Any]:
        acc = 0.5 + 0.1 * METHODS.index(cfg.method) + 0.01 * cfg.seed + cfg.labeled_fraction / 10
        return {"checkpoint": "last", "epoch": cfg.epochs, "knn_acc": acc, "map_at_20": acc / 2,
                "anmrr": 1 - acc}

    def __call__(self, cfg: TrainConfig, resume=None, overrides=None) -> dict[str, Any]:
        self.calls.append({"cfg": cfg, "resume": resume, "overrides": overrides})
        if resume is not None:
            run = Path(resume)
            from rsdml.training.methods.registry import param_classes

            cfg = TrainConfig.from_yaml(run / "config.yaml", params=param_classes())
        else:
            if cfg.method == self.fail:
                raise RsdmlError("loss became NaN (fake)")
            run = Path(cfg.out)
            assert not run.exists() or not any(run.iterdir())  # the runner refuses a used folder
            run.mkdir(parents=True, exist_ok=True)
            cfg.save_yaml(run / "config.yaml")
            shutil.copy(cfg.split, run / "split.csv")
            (run / "checkpoints").mkdir()
            (run / "checkpoints" / "last.pt").write_bytes(b"fake")
            tag = f"method={cfg.method} frac={cfg.labeled_fraction} seed={cfg.seed}"
            if tag == self.interrupt:
                raise KeyboardInterrupt
        result = self.metrics(cfg)
        (run / "final_metrics.json").write_text(json.dumps(result))
        return {**result, "wall_seconds": 0.1}


@pytest.fixture(autouse=True)
def _fast_plot(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drawing the PNG after every cell costs ~1 s; only tests using ``real_plot`` draw it."""
    if "real_plot" not in request.fixturenames:
        import rsdml.evaluation.aggregate as agg

        monkeypatch.setattr(agg, "plot_results", lambda _s, path: Path(path).write_bytes(b""))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTrain:
    f = FakeTrain()
    monkeypatch.setattr(ex, "train", f)
    return f


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- expansion
def test_expansion_is_the_product_in_a_fixed_order():
    grid = _grid(method=["b", "a"], labeled_fraction=[0.1, 0.2], seed=[0, 1], lr=[0.1, 0.01])
    cells = expand_grid(grid)
    assert len(cells) == 16
    assert list(cells[0]) == ["method", "labeled_fraction", "seed", "lr"]
    # seed slowest, then fraction, then the other keys, method fastest (grid order kept)
    assert [tuple(c.values()) for c in cells[:5]] == [
        ("b", 0.1, 0, 0.1), ("a", 0.1, 0, 0.1), ("b", 0.1, 0, 0.01), ("a", 0.1, 0, 0.01),
        ("b", 0.2, 0, 0.1),
    ]
    assert tuple(cells[-1].values()) == ("a", 0.2, 1, 0.01)
    assert len({tuple(c.values()) for c in cells}) == 16
    assert expand_grid(grid) == cells


def test_keys_missing_from_the_grid_come_from_base_or_the_defaults():
    grid = parse_grid({"base": {"data": "x", "method": "snca"}, "grid": {"seed": [3, 4]}})
    assert expand_grid(grid) == [
        {"method": "snca", "labeled_fraction": TrainConfig().labeled_fraction, "seed": 3},
        {"method": "snca", "labeled_fraction": TrainConfig().labeled_fraction, "seed": 4},
    ]


@pytest.mark.parametrize(
    "values, match",
    [
        ({"base": {"bogus_key": 1}, "grid": {}}, "bogus_key"),
        ({"base": {}, "grid": {"methd": ["snca"]}}, "methd"),
        ({"grdi": {}, "base": {}}, "grdi"),
        ({"base": {"out": "x"}}, "out"),
        ({"grid": {"split": ["a.csv"]}}, "split"),
        ({"base": {"seed": 1}, "grid": {"seed": [1, 2]}}, "both"),
        ({"grid": {"seed": []}}, "empty"),
        ({"grid": {"seed": [1, 1]}}, "more than once"),
        ({"grid": {"seed": ["one"]}}, "whole number"),
        ({"grid": {"lr": ["fast"]}}, "must be a number"),
        ({"grid": "method"}, "mapping"),
    ],
)
def test_bad_grid_files_name_the_problem(values, match):
    with pytest.raises(RsdmlError, match=match):
        parse_grid(values)


def test_yaml_text_numbers_and_dashed_keys_are_accepted(tmp_path):
    p = tmp_path / "grid.yaml"
    p.write_text("base:\n  data: d\n  weight-decay: 5e-4\ngrid:\n  lr: [1e-2, 0.1]\n  seed: 0\n")
    grid = ex.load_grid(p)
    assert grid.base["weight_decay"] == pytest.approx(5e-4)
    assert grid.axes == {"lr": [0.01, 0.1], "seed": [0]}


def test_every_cell_is_validated_before_anything_runs(tmp_path, fake):
    grid = _grid(method=["hr-s2dml", "no-such-method"], labeled_fraction=[0.5], seed=[0])
    with pytest.raises(RsdmlError, match="no-such-method"):
        run_experiment(grid, tmp_path / "exp")
    bad_frac = _grid(method=["hr-s2dml"], labeled_fraction=[0.5, 1.5], seed=[0])
    with pytest.raises(RsdmlError, match=r"cell .*labeled_fraction=1\.5"):
        run_experiment(bad_frac, tmp_path / "exp")
    assert fake.calls == []
    assert not (tmp_path / "exp").exists()


def test_run_folders_have_readable_names(tmp_path):
    grid = _grid(method=["snca"], labeled_fraction=[0.1], seed=[2], lr=[0.01])
    (cell,) = plan_cells(grid, tmp_path)
    assert cell.run_dir == (tmp_path / "runs/snca/frac0.1/seed2/lr=0.01").absolute()
    assert cell.label == "method=snca frac=0.1 seed=2 lr=0.01"
    assert Path(cell.config.out) == cell.run_dir and cell.config.epochs == 1


# --------------------------------------------------------------------------- running (fake trainer)
def test_methods_of_a_seed_and_fraction_share_one_split(scenes, tmp_path, fake):
    run_experiment(_grid(scenes), tmp_path / "exp", echo=lambda s: None)
    assert len(fake.calls) == 8
    by_key: dict[tuple, set[str]] = {}
    for call in fake.calls:
        cfg = call["cfg"]
        by_key.setdefault((cfg.labeled_fraction, cfg.seed), set()).add(cfg.split)
    assert all(len(s) == 1 for s in by_key.values())  # one split per (fraction, seed) ...
    splits = {next(iter(s)) for s in by_key.values()}
    assert len(splits) == 4  # ... and a different one for each
    for (frac, _seed), (path,) in by_key.items():
        assert Path(path).parent == (tmp_path / "exp" / "splits").absolute()
        split = read_split_csv(path, scenes)
        assert split.counts()["labeled"] == 4 * round(12 * frac)
    seed0 = read_split_csv(by_key[(0.25, 0)].pop()).roles
    seed1 = read_split_csv(by_key[(0.25, 1)].pop()).roles
    assert (seed0 != seed1).any()


def test_skips_finished_cells_and_resumes_an_interrupted_one(scenes, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    grid = _grid(scenes, method=METHODS, labeled_fraction=[0.5], seed=[0])
    first = FakeTrain(interrupt="method=snca frac=0.5 seed=0")
    monkeypatch.setattr(ex, "train", first)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(grid, out, echo=lambda s: None)
    assert [c["cfg"].method for c in first.calls] == METHODS
    assert len(_csv_rows(out / "results.csv")) == 2  # partial results written after each cell

    second = FakeTrain()
    monkeypatch.setattr(ex, "train", second)
    lines: list[str] = []
    result = run_experiment(grid, out, echo=lines.append)
    (call,) = second.calls  # the two finished cells were not run again
    assert call["resume"] == out.absolute() / "runs/snca/frac0.5/seed0"
    assert call["overrides"] == {} and call["cfg"] == TrainConfig()
    assert (result.ran, result.skipped) == (1, 2)
    assert "finished earlier, skipped" in lines[0] and "(resuming)" in lines[2]
    rows = _csv_rows(out / "results.csv")
    assert [r["method"] for r in rows] == METHODS
    expected = second.metrics(TrainConfig(method="snca", seed=0, labeled_fraction=0.5))
    assert float(rows[2]["knn_acc"]) == pytest.approx(expected["knn_acc"])

    third = FakeTrain()
    monkeypatch.setattr(ex, "train", third)
    run_experiment(grid, out, echo=lambda s: None)
    assert third.calls == []  # everything finished: nothing runs, the tables are remade

    # an interrupted cell before finished ones: the tables written after it list them all
    (out / "runs/hr-s2dml/frac0.5/seed0/final_metrics.json").unlink()
    (out / "results.csv").unlink()
    fourth = FakeTrain()
    monkeypatch.setattr(ex, "train", fourth)
    run_experiment(grid, out, echo=lambda s: None)
    assert [c["resume"] is not None for c in fourth.calls] == [True]
    assert [r["method"] for r in _csv_rows(out / "results.csv")] == METHODS


def test_a_cell_killed_before_its_first_checkpoint_starts_again(scenes, tmp_path, fake):
    out = tmp_path / "exp"
    grid = _grid(scenes, method=["hr-s2dml"], labeled_fraction=[0.5], seed=[0])
    run_dir = out / "runs/hr-s2dml/frac0.5/seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("stale: true\n")
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    run_experiment(grid, out, echo=lambda s: None)
    (call,) = fake.calls
    assert call["resume"] is None and call["cfg"].method == "hr-s2dml"
    assert not (run_dir / "metrics.jsonl").exists()
    assert (run_dir / "final_metrics.json").is_file()


def test_a_changed_grid_does_not_mix_with_earlier_runs(scenes, tmp_path, fake, monkeypatch):
    out = tmp_path / "exp"
    grid = _grid(scenes, method=["hr-s2dml"], labeled_fraction=[0.5], seed=[0])
    run_experiment(grid, out, echo=lambda s: None)
    changed = _grid(scenes, base={"lr": 0.01}, method=["hr-s2dml"], labeled_fraction=[0.5],
                    seed=[0])
    with pytest.raises(RsdmlError, match=r"lr None -> 0\.01"):
        run_experiment(changed, out, echo=lambda s: None)
    # runtime options may change: the finished cell is still accepted
    run_experiment(grid, out, overrides={"device": "cpu", "quiet": True}, echo=lambda s: None)
    assert len(fake.calls) == 1


@pytest.fixture
def real_plot() -> None:
    """Requesting this fixture keeps the real results.png drawing."""


def test_results_files_and_progress_lines(scenes, tmp_path, fake, real_plot):
    out = tmp_path / "exp"
    lines: list[str] = []
    grid = _grid(scenes, method=METHODS[:2], labeled_fraction=[0.25, 0.5], seed=[0])
    result = run_experiment(grid, out, echo=lines.append)
    cell_lines = [l for l in lines if l.startswith("[cell")]
    assert len(cell_lines) == 4
    assert re.fullmatch(r"\[cell 1/4\] method=hr-s2dml frac=0\.25 seed=0 — elapsed \d+s, ETA \?",
                        cell_lines[0])
    assert re.fullmatch(
        r"\[cell 2/4\] method=nsm-margin frac=0\.25 seed=0 — elapsed \d+s, ETA \d+s",
        cell_lines[1])
    rows = _csv_rows(result.csv)
    assert len(rows) == 4
    assert list(rows[0]) == ["method", "labeled_fraction", "seed", "knn_acc", "map_at_20", "anmrr",
                             "wall_seconds", "run"]
    assert rows[0]["run"] == "runs/hr-s2dml/frac0.25/seed0"
    md = result.markdown.read_text()
    assert "## Labelled fraction 0.25" in md and "## Labelled fraction 0.5" in md
    # nsm-margin scores higher in the fake, at every fraction: its kNN mean is bold
    nsm = [l for l in md.splitlines() if l.startswith("| nsm-margin")]
    assert len(nsm) == 2 and all(l.split("|")[3].strip().startswith("**") for l in nsm)
    assert result.plot.read_bytes()[:4] == b"\x89PNG"
    cell = json.loads((out / "runs/hr-s2dml/frac0.25/seed0/cell.json").read_text())
    assert cell["resumed"] is False and cell["wall_seconds"] >= 0


def test_keep_going_runs_the_other_cells_and_fails_at_the_end(scenes, tmp_path, monkeypatch):
    f = FakeTrain(fail="nsm-margin")
    monkeypatch.setattr(ex, "train", f)
    grid = _grid(scenes, method=METHODS, labeled_fraction=[0.5], seed=[0])
    with pytest.raises(RsdmlError, match="1 cell.*method=nsm-margin"):
        run_experiment(grid, tmp_path / "exp", keep_going=True, echo=lambda s: None)
    assert [c["cfg"].method for c in f.calls] == METHODS
    assert [r["method"] for r in _csv_rows(tmp_path / "exp/results.csv")] == ["hr-s2dml", "snca"]
    with pytest.raises(RsdmlError, match="NaN"):  # without keep_going the first failure stops
        run_experiment(grid, tmp_path / "exp2", echo=lambda s: None)


def test_an_interrupt_stops_the_grid_even_with_keep_going(scenes, tmp_path, monkeypatch):
    trainer = pytest.importorskip("rsdml.training.trainer",
                                  reason="the trainer's imports are not all in the tree yet")
    TrainingInterrupted = trainer.TrainingInterrupted
    calls = []

    def interrupted(cfg, resume=None, overrides=None):
        calls.append(cfg.method)
        raise TrainingInterrupted("got SIGINT; checkpoint saved", 2)

    monkeypatch.setattr(ex, "train", interrupted)
    grid = _grid(scenes, method=METHODS, labeled_fraction=[0.5], seed=[0])
    with pytest.raises(RsdmlError, match="run the same `rsdml experiment` command again") as info:
        run_experiment(grid, tmp_path / "exp", keep_going=True, echo=lambda s: None)
    assert info.value.exit_code == 130 and calls == ["hr-s2dml"]


def test_cli_dry_run_lists_cells_and_errors_exit_cleanly(scenes, tmp_path, fake):
    from rsdml.cli.experiment import experiment

    p = tmp_path / "grid.yaml"
    p.write_text(f"base:\n  data: {scenes}\n  epochs: 1\ngrid:\n  method: [hr-s2dml, snca]\n"
                 "  labeled_fraction: [0.5]\n  seed: [0]\n")
    res = CliRunner().invoke(experiment, [str(p), "--out", str(tmp_path / "exp"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "[cell 2/2] method=snca frac=0.5 seed=0: run" in res.output
    assert fake.calls == []
    res = CliRunner().invoke(experiment, [str(p), "--out", str(tmp_path / "exp"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert all(c["cfg"].quiet for c in fake.calls) and len(fake.calls) == 2
    assert "results.md" in res.output


# --------------------------------------------------------------------------- one real grid
def test_real_tiny_grid_end_to_end(scenes, tmp_path, real_plot):
    """One real cell through runner.train (the many-cell logic is covered by the fakes above)."""
    pytest.importorskip("rsdml.data.cache", reason="the image cache module is not in the tree yet")
    grid = _grid(scenes, base={"backbone": "resnet18", "pretrained": "none", "image_size": 32,
                               "batch_size": 8, "unlabeled_batch_size": 8, "eval_batch_size": 64,
                               "device": "cpu", "quiet": True},
                 method=["hr-s2dml"], labeled_fraction=[0.25], seed=[0])
    out = tmp_path / "exp"
    result = run_experiment(grid, out, echo=lambda s: None)
    (row,) = _csv_rows(result.csv)
    assert row["method"] == "hr-s2dml"
    assert 0.0 <= float(row["knn_acc"]) <= 1.0 and 0.0 <= float(row["map_at_20"]) <= 1.0
    (shared_split,) = list((out / "splits").glob("*.csv"))
    run_dir = out / "runs/hr-s2dml/frac0.25/seed0"
    assert (run_dir / "split.csv").read_text() == shared_split.read_text()
    assert TrainConfig.from_yaml(run_dir / "config.yaml").split == str(shared_split)
    assert "| hr-s2dml | 1 |" in result.markdown.read_text()
    assert result.plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name, n_cells",
                         [("grid_aid_fast.yaml", 63), ("grid_small_example.yaml", 12)])
def test_shipped_grids_are_valid_fast_mode_grids(name, n_cells, tmp_path):
    path = Path(__file__).resolve().parents[2] / "configs" / name
    cells = plan_cells(ex.load_grid(path), tmp_path)  # validates every cell; reads no data
    assert len(cells) == n_cells
    assert all(c.config.freeze_backbone and c.config.pretrained == "imagenet" for c in cells)
    assert {c.config.backbone for c in cells} == {"efficientnet_lite0"}
    if name == "grid_aid_fast.yaml":
        from rsdml.training.methods.registry import METHODS

        # every method that fast mode can run (the view methods need pixels)
        assert {c.config.method for c in cells} == {n for n, c in METHODS.items()
                                                     if not c.uses_views}
        assert {c.config.labeled_fraction for c in cells} == {0.05, 0.1, 0.2}
        assert {c.config.seed for c in cells} == {0, 1, 2}


@pytest.mark.parametrize("name, n_cells, frozen", [
    ("grid_aid_finetune.yaml", 18, False), ("grid_aid_fast64.yaml", 18, True),
    ("grid_aid_paper_gpu.yaml", 2, False), ("tune_aid_finetune.yaml", 3, False)])
def test_shipped_fine_tuning_grids_validate(name, n_cells, frozen, tmp_path):
    path = Path(__file__).resolve().parents[2] / "configs" / name
    cells = plan_cells(ex.load_grid(path), tmp_path)
    assert len(cells) == n_cells
    assert all(c.config.freeze_backbone is frozen for c in cells)
    if not frozen:  # fine-tuning grids keep rsdml's fine-tuning defaults
        assert all(c.config.optimizer == "adamw" and c.config.bn_frozen for c in cells)


def test_paper_config_is_the_papers_regime():
    path = Path(__file__).resolve().parents[2] / "configs" / "paper.yaml"
    cfg = TrainConfig.from_yaml(path).validate()
    assert (cfg.optimizer, cfg.base_lr, cfg.trunk_lr_factor, cfg.schedule) == ("sgd", 0.1, 1.0, "step")
    assert (cfg.warmup_epochs, cfg.head_warmup_epochs, cfg.bnm_warmup_epochs) == (0, 0, 0)
    assert (cfg.epochs, cfg.image_size, cfg.lr_step, cfg.lr_gamma, cfg.bn) == (130, 256, 30, 0.5, "train")


def test_an_interrupt_is_not_reported_as_an_error(scenes, tmp_path, monkeypatch, capsys):
    """Ctrl-C is the user's choice: "rsdml: interrupted ...", not "rsdml: error: ..."."""
    trainer = pytest.importorskip("rsdml.training.trainer")
    from rsdml.cli.main import main

    def interrupted(cfg, resume=None, overrides=None):
        raise trainer.TrainingInterrupted("got SIGINT; checkpoint saved", 2)

    monkeypatch.setattr(ex, "train", interrupted)
    p = tmp_path / "grid.yaml"
    p.write_text(f"base:\n  data: {scenes}\n  epochs: 1\ngrid:\n  seed: [0]\n")
    with pytest.raises(SystemExit) as e:
        main(["experiment", str(p), "--out", str(tmp_path / "exp"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 130
    assert err.startswith("rsdml: interrupted in cell") and "error" not in err


def test_every_shipped_grid_validates(tmp_path):
    """Every grid and tune file in configs/ plans (each cell's options validated, no data
    read); the lever and tune files that pin the view terms to 0 keep their documented runs."""
    root = Path(__file__).resolve().parents[2] / "configs"
    names = sorted(p.name for p in root.glob("*.yaml")
                   if p.name.startswith(("grid_", "lever_", "tune_")))
    assert "lever_aid150_plain.yaml" in names
    for name in names:
        cells = plan_cells(ex.load_grid(root / name), tmp_path / name)
        assert cells, name
    plain = plan_cells(ex.load_grid(root / "lever_aid150_plain.yaml"), tmp_path / "p")
    assert all(c.config.method_params["instance_weight"] == 0.0
               and c.config.method_params["propagation_weight"] == 0.0 for c in plain)
    both = plan_cells(ex.load_grid(root / "lever_aid150_propagation_instance.yaml"), tmp_path / "b")
    assert all(c.config.method_params["instance_weight"] == 1.0
               and c.config.method_params["propagation_weight"] == 1.0 for c in both)

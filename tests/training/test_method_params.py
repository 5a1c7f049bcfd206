"""Method hyper-parameters declared by the method: flags, YAML keys, checks, a new method in a test."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import pytest
import yaml
from torch import Tensor

from rsdml.cli.main import main
from rsdml.config import TrainConfig, option
from rsdml.errors import RsdmlError
from rsdml.training.methods import params as catalogue
from rsdml.training.methods.margin_softmax import NSMMargin
from rsdml.training.methods.registry import (
    METHODS,
    check_method,
    create_method,
    param_classes,
    register,
    registered,
)

TINY = ["--backbone", "resnet18", "--pretrained", "none", "--image-size", "32",
        "--batch-size", "8", "--unlabeled-batch-size", "8", "--epochs", "1", "--device", "cpu",
        "--quiet", "--eval-batch-size", "64", "--no-report"]


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


@dataclass(frozen=True)
class ToyParams:
    toy_scale: float = option(1.0, "toy: factor on the loss.", gt=0.0)


class Toy(NSMMargin):
    """A method that exists only in this test: nsm-margin times its own parameter."""

    name: ClassVar[str] = "toy"
    params_class: ClassVar[type | None] = ToyParams
    seen: ClassVar[list[float]] = []

    def forward(self, emb_l: Tensor, labels_l: Tensor, index_l: Tensor,
                emb_u: Tensor | None = None) -> dict[str, Tensor]:
        Toy.seen.append(self.params.toy_scale)
        nsm = self.params.toy_scale * self.nsm(emb_l, labels_l)
        return {"total": nsm, "nsm": nsm}


@pytest.fixture
def toy() -> Iterator[type[Toy]]:
    Toy.seen.clear()
    with registered("toy", Toy):  # the one registry line, for this test only
        yield Toy
    assert "toy" not in METHODS and "toy" not in catalogue.CATALOGUE


def test_a_method_registered_in_a_test_trains_through_the_cli_with_its_parameter(
        toy, tiny_scenes, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = _cli(["train", "--data", str(tiny_scenes), "--out", str(out),
                              "--method", "toy", "--toy-scale", "2.5", *TINY], capsys)
    assert code == 0, err
    assert toy.seen and set(toy.seen) == {2.5}  # the flag reached the method's own dataclass
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"] == "toy" and saved["toy_scale"] == 2.5
    assert "triplet_margin" not in saved and "method_params" not in saved
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x]
    assert rows, "no training step was logged"


def test_a_test_method_parameter_is_checked_and_reads_from_yaml(toy, tiny_scenes, tmp_path,
                                                                 capsys):
    code, _, err = _cli(["train", "--data", str(tiny_scenes), "--out", str(tmp_path / "r"),
                         "--method", "toy", "--toy-scale", "0", *TINY], capsys)
    assert code == 2 and "--toy-scale 0.0 must be > 0" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
    p = tmp_path / "c.yaml"
    p.write_text("method: toy\ntoy-scale: 3e-1\n")
    cfg = check_method(TrainConfig.from_yaml(p, params=param_classes()))
    assert cfg.method_params == {"toy_scale": 0.3}


def test_the_registry_fills_in_and_checks_the_method_parameters():
    assert check_method(TrainConfig(method="snca")).method_params == {"snca_momentum": 0.5}
    assert check_method(TrainConfig(method="hr-s2dml")).method_params == {}
    with pytest.raises(RsdmlError, match=r"--snca-momentum 1.0 must be in \[0, 1\)"):
        check_method(TrainConfig(method="snca", method_params={"snca_momentum": 1.0}))
    with pytest.raises(RsdmlError, match=r"--triplet-margin -0.1 must be >= 0$"):
        check_method(TrainConfig(method="triplet", method_params={"triplet_margin": -0.1}))
    m = create_method(check_method(TrainConfig(method="triplet",
                                               method_params={"triplet_margin": 0.3})), 4,
                      Tensor([0, 1, 2, 3]).long())
    assert m.params.triplet_margin == 0.3 and m.loss.margin == 0.3


def test_an_old_config_yaml_with_every_method_parameter_still_loads(tmp_path, caplog):
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump({**TrainConfig(method="snca").to_dict(),
                                 "triplet_margin": 0.1, "snca_momentum": 0.25}))
    cfg = check_method(TrainConfig.from_yaml(p, params=param_classes()))
    assert cfg.method_params == {"snca_momentum": 0.25}
    assert not caplog.records  # another method's default value: dropped silently


def test_another_methods_parameter_is_refused_when_set():
    cfg = TrainConfig(method="snca", method_params={"triplet_margin": 0.3})
    with pytest.raises(RsdmlError, match="--triplet-margin applies to --method triplet; "
                                         "--method snca does not use it"):
        check_method(cfg)


@pytest.mark.parametrize(("method", "option", "value"), [
    ("freematch", "threshold", 0.5), ("freematch", "hr_view", "weak"),
    ("fixmatch", "freematch_ema", 0.9), ("fixmatch", "hr_view", "weak"),
    ("hr-match", "freematch_ema", 0.9)])
def test_each_consistency_method_has_its_own_parameters(method, option, value):
    """Issue 25, defect 8: the three shared one class, so freematch took --threshold and
    --hr-view without a word and used neither."""
    with pytest.raises(RsdmlError, match=f"--{option.replace('_', '-')} applies to"):
        check_method(TrainConfig(method=method, method_params={option: value}))
    own = check_method(TrainConfig(method=method)).method_params
    assert option not in own and own["consistency_weight"] == 1.0


def test_flags_and_yaml_keys_of_the_builtin_parameters(tiny_scenes, tmp_path, capsys):
    code, _, err = _cli(["train", "--data", str(tiny_scenes), "--out", str(tmp_path / "r"),
                         "--method", "snca", "--snca-momentum", "1.5", *TINY], capsys)
    assert code == 2 and "--snca-momentum 1.5 must be in [0, 1)" in err
    p = tmp_path / "c.yaml"
    p.write_text("triplet_margin: 5e-2\n")
    assert TrainConfig.from_yaml(p, params=param_classes()).method_params == {
        "triplet_margin": 0.05}
    p.write_text("triplet_margn: 0.1\n")
    with pytest.raises(RsdmlError, match="did you mean 'triplet_margin'"):
        TrainConfig.from_yaml(p, params=param_classes())


def test_config_imports_neither_torch_nor_the_registries():
    code = ("import sys, rsdml.config; bad = [m for m in ('torch', 'rsdml.training.methods."
            "registry', 'rsdml.models.registry') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_torch_free_catalogue_and_the_registry_agree():
    assert list(catalogue.CATALOGUE) == list(METHODS)
    assert {n: c.params_class for n, c in METHODS.items()} == catalogue.CATALOGUE
    assert catalogue.param_classes() == param_classes()
    assert catalogue.param_owners()["threshold"] == ["fixmatch", "hr-match"]  # not freematch


def test_registering_a_method_adds_its_flags_and_a_clashing_flag_is_refused(toy):
    assert "toy" in catalogue.CATALOGUE and ToyParams in param_classes()
    assert catalogue.param_owners()["toy_scale"] == ["toy"]

    @dataclass(frozen=True)
    class Clash:
        toy_scale: float = option(2.0, "clash: the toy's flag again.")

    class Other(Toy):
        params_class: ClassVar[type | None] = Clash

    with pytest.raises(RuntimeError, match="toy_scale"):
        register("other", Other)
    assert "other" not in METHODS and "other" not in catalogue.CATALOGUE
    assert METHODS["toy"] is Toy  # the refused one left the registry as it was


def test_the_method_parameter_classes_import_without_torch():
    code = ("import sys, rsdml.training.methods.params as p; p.param_classes(); "
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stdout + res.stderr


def test_the_registry_refuses_a_catalogue_that_disagrees(monkeypatch):
    from rsdml.training.methods import registry

    registry._check_catalogue()  # as shipped: they agree
    monkeypatch.setitem(catalogue.CATALOGUE, "snca", catalogue.TripletParams)
    with pytest.raises(RuntimeError, match="'snca'"):
        registry._check_catalogue()
    monkeypatch.delitem(catalogue.CATALOGUE, "snca")
    with pytest.raises(RuntimeError, match="must list the same methods"):
        registry._check_catalogue()


@pytest.mark.parametrize("frozen, stages, expected", [(True, 0, 1.0), (False, 0, 0.0), (True, 1, 0.0)])
def test_the_view_terms_default_on_in_fast_mode_only(frozen, stages, expected):
    from rsdml.training.runner import validate_config

    cfg = validate_config(TrainConfig(data="x", method="hr-match", freeze_backbone=frozen,
                                      train_stages=stages, backbone="efficientnet_lite0"))
    # on cached views the instance weight depends on the labels a class: set with the split
    assert cfg.method_params["instance_weight"] == (None if expected else 0.0)
    assert cfg.method_params["propagation_weight"] == expected
    assert cfg.method_params["propagation_margin"] is None  # set once the split is made
    # a value the user gives is kept, in either mode
    given = validate_config(TrainConfig(data="x", method="fixmatch", freeze_backbone=frozen,
                                        train_stages=stages, backbone="efficientnet_lite0")
                            .replace(method_params={"instance_weight": 0.5}))
    assert given.method_params["instance_weight"] == 0.5
    assert given.method_params["propagation_weight"] == expected


@pytest.mark.parametrize("per_class, frozen, stages, given, expected, weight", [
    ([1, 2, 1], True, 0, None, 0.75, 2.0),  # the labelling loop's first round: 1 a class
    ([2, 2, 1], True, 0, None, 0.5, 1.0),   # median 2: the smaller margin, instance 1
    ([3, 5, 4], True, 0, None, 0.5, 1.0),   # 3-5 a class: the same
    ([5, 5, 4], True, 0, None, 0.5, 1.0),   # median 5: still few
    ([6, 9, 12], True, 0, None, 0.0, 1.0),  # enough labels a class: no margin, instance 1
    ([1, 2, 1], False, 0, None, 0.0, 0.0),  # the trunk trains: not measured there
    ([1, 2, 1], True, 1, None, 0.0, 0.0),   # partial fine-tuning: neither
    ([1, 2, 1], True, 0, 0.2, 0.2, 2.0),    # what the user says is kept, the rest filled in
    ([6, 9, 12], True, 0, 0.3, 0.3, 1.0),
])
def test_the_few_label_terms_default_on_with_few_labels_a_class(per_class, frozen, stages, given,
                                                                expected, weight, caplog):
    import numpy as np

    from rsdml.data.split import Split
    from rsdml.training.runner import split_defaults, validate_config

    cfg = validate_config(TrainConfig(data="x", method="hr-match", freeze_backbone=frozen,
                                      train_stages=stages, backbone="efficientnet_lite0")
                          .replace(method_params={"propagation_weight": 1.0,
                                                  "propagation_margin": given}))
    labels = np.concatenate([np.full(n + 20, c) for c, n in enumerate(per_class)])
    roles = np.concatenate([["labeled"] * n + ["unlabeled"] * 20 for n in per_class])
    split = Split("transductive", ["a", "b", "c"], [f"{i}.png" for i in range(len(labels))],
                  labels, roles)
    with caplog.at_level("INFO", logger="rsdml.training.runner"):
        filled = split_defaults(cfg, split).method_params
        assert (filled["propagation_margin"], filled["instance_weight"]) == (expected, weight)
        assert not caplog.text  # only a new run announces it
        again = split_defaults(cfg, split, announce=True).method_params
        assert (again["propagation_margin"], again["instance_weight"]) == (expected, weight)
    # the user hears of a default that differs from fast mode's with more labels
    assert ("(--instance-weight 2)" in caplog.text) == (weight == 2.0)
    assert ("(--instance-weight 1)" not in caplog.text)
    assert (f"(--propagation-margin {expected:g})" in caplog.text) == (given is None
                                                                        and expected > 0)
    assert split_defaults(split_defaults(cfg, split), split) == split_defaults(cfg, split)
    # a weight the user gives is kept too
    mine = cfg.replace(method_params={**cfg.method_params, "instance_weight": 0.5})
    assert split_defaults(mine, split).method_params["instance_weight"] == 0.5
    # without label propagation there is no term to take a margin, and the instance term
    # keeps fast mode's weight
    off = split_defaults(cfg.replace(method_params={**cfg.method_params,
                                                    "propagation_weight": 0.0}), split)
    assert off.method_params["propagation_margin"] == (given or 0.0)
    assert off.method_params["instance_weight"] == (1.0 if frozen and not stages else 0.0)


def test_a_finished_cell_whose_split_set_the_margin_still_matches_its_grid(tmp_path):
    """A grid cell leaves --propagation-margin and --instance-weight unset (its split decides);
    the run wrote the values it got into config.yaml. Running the grid again must take that run as the cell's;
    a value the grid does name, or a recorded value its split no longer gives (a changed
    default), must still be told apart."""
    import numpy as np

    from rsdml.data.split import Split
    from rsdml.errors import RsdmlError
    from rsdml.training.cells import Cell, check_same_config
    from rsdml.training.methods.params import param_classes
    from rsdml.training.run_folder import RunFolder
    from rsdml.training.runner import validate_config

    cell_cfg = validate_config(TrainConfig(data=str(tmp_path), method="hr-match",
                                           freeze_backbone=True, backbone="efficientnet_lite0"))
    assert cell_cfg.method_params["propagation_margin"] is None
    split = Split("transductive", ["a", "b"], [f"{i}.png" for i in range(10)],
                  np.repeat([0, 1], 5), np.array((["labeled"] + ["test"] * 4) * 2))
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def check(cfg, margin, weight):
        ran = cell_cfg.replace(method_params={**cell_cfg.method_params,
                                              "propagation_margin": margin,
                                              "instance_weight": weight})
        RunFolder(run_dir).write_start(ran, split)
        check_same_config(Cell(1, {}, cfg, run_dir, tmp_path / "s.csv"), "grid.yaml",
                          param_classes())

    check(cell_cfg, 0.75, 2.0)  # 1 label a class: the terms the split gives
    check(cell_cfg, None, None)  # made before the options existed: none recorded, none compared
    named = cell_cfg.replace(method_params={**cell_cfg.method_params, "propagation_margin": 0.25})
    with pytest.raises(RsdmlError, match=r"propagation_margin 0\.75 -> 0\.25"):
        check(named, 0.75, 2.0)
    with pytest.raises(RsdmlError, match=r"propagation_margin 0\.0 -> 0\.75"):
        check(cell_cfg, 0.0, 2.0)
    # made before the instance weight depended on the split: 1 recorded, 2 now
    with pytest.raises(RsdmlError, match=r"instance_weight 1\.0 -> 2\.0"):
        check(cell_cfg, None, 1.0)

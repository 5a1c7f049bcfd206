"""The one options loader: every TrainConfig option read back from YAML in every spelling."""

from __future__ import annotations

from dataclasses import fields

import pytest

from rsdml.config import (
    PATH_FIELDS,
    TrainConfig,
    config_values,
    convert_value,
    option_fields,
    option_name,
)
from rsdml.errors import RsdmlError
from rsdml.training.methods.registry import param_classes

PARAMS = param_classes()
_HINTS = {**{f.name: f for f in fields(TrainConfig)}, **option_fields(PARAMS)}
OPTIONS = list(option_fields(PARAMS))  # TrainConfig's fields and the methods' parameters


def _spellings(name: str) -> list[tuple[str, object]]:
    """(YAML text of a value, the value the loader must give) for field ``name``."""
    f = _HINTS[name]
    ann = str(f.type)
    optional = "None" in ann
    none = [("null", None), ("~", None)] if optional else []
    if name in PATH_FIELDS:
        return [("some/dir", "some/dir"), ("'~/x y/z.csv'", "~/x y/z.csv"), *none]
    if f.metadata.get("choices"):
        return [(c, c) for c in f.metadata["choices"]] + [(f"'{c}'", c) for c in f.metadata["choices"]]
    if ann.startswith("bool"):
        return [*none, ("true", True), ("false", False), ("yes", True), ("no", False), ("on", True),
                ("off", False), ("'no'", False), ("'yes'", True), ("'True'", True),
                ("'false'", False), ("1", True), ("0", False)]
    if ann.startswith("int"):
        return [("7", 7), ("'7'", 7), ("7.0", 7), ("1e1", 10), ("'30'", 30), *none]
    if ann.startswith("float"):
        return [("5e-2", 0.05), ("0.05", 0.05), ("1e-4", 1e-4), ("1.0e-4", 1e-4), ("'0.3'", 0.3),
                ("3", 3.0), (".5", 0.5), ("2E-3", 0.002), *none]
    return [("triplet", "triplet"), ("'efficientnet_lite0'", "efficientnet_lite0")]


CASES = [(name, text, want) for name in OPTIONS for text, want in _spellings(name)]


@pytest.mark.parametrize("name, text, want", CASES)
@pytest.mark.parametrize("dashes", [False, True])
def test_every_option_reads_back_from_yaml_in_every_spelling(name, text, want, dashes, tmp_path):
    key = name.replace("_", "-") if dashes else name
    p = tmp_path / "c.yaml"
    p.write_text(f"{key}: {text}\n")
    got = TrainConfig.from_yaml(p, params=PARAMS).value(name)
    assert got == (pytest.approx(want) if isinstance(want, float) else want)
    assert type(got) is type(want)  # 7 stays an int, 3 becomes the float 3.0


def test_every_field_is_covered_and_a_full_config_round_trips(tmp_path):
    assert {c[0] for c in CASES} == set(OPTIONS) > set(TrainConfig.field_names())
    changed = {name: next(w for _, w in _spellings(name) if w != getattr(TrainConfig(), name))
               for name in TrainConfig.field_names()}
    cfg = TrainConfig(**changed)
    cfg.save_yaml(tmp_path / "config.yaml")
    back = TrainConfig.from_yaml(tmp_path / "config.yaml")
    assert back == cfg and back != TrainConfig()
    with_params = cfg.replace(method_params={"triplet_margin": 0.25, "snca_momentum": 0.75})
    with_params.save_yaml(tmp_path / "config.yaml")
    assert TrainConfig.from_yaml(tmp_path / "config.yaml", params=PARAMS) == with_params


@pytest.mark.parametrize(
    "values, message",
    [
        ({"eval_evry": 5}, "unknown key 'eval_evry' (did you mean 'eval_every'?)"),
        ({"labeled-fracton": 0.1}, "did you mean 'labeled_fraction'?"),
        ({"learning_rate": 0.1}, "unknown key 'learning_rate'"),
        ({"freeze_backbone": "nein"}, "freeze_backbone = 'nein' must be true or false"),
        ({"freeze_backbone": 2}, "must be true or false"),
        ({"epochs": 2.5}, "epochs = 2.5 must be a whole number"),
        ({"epochs": True}, "must be a whole number"),
        ({"lr": "fast"}, "lr = 'fast' must be a number"),
        ({"lr": ".nan"}, "must be a number"),
        ({"margin": None}, "margin needs a value"),
        ({"cache": "memry"}, "is not one of auto, memory, mmap (did you mean 'memory'?)"),
        ({"data": 2020}, "data = 2020 must be a path"),
        ({"method": ["a"]}, "must be text"),
        ({"eval-every": 1, "eval_every": 2}, "same option"),
    ],
)
def test_unknown_keys_and_wrong_types_are_one_line_errors(values, message):
    with pytest.raises(RsdmlError) as e:
        config_values(values, "c.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("c.yaml: ")


def test_flag_spellings_and_choices_case():
    assert option_name("--eval-every", "x") == "eval_every"
    assert convert_value("device", "CPU", "x") == "cpu"
    assert convert_value("bnm_logit_scale", "none", "x") is None
    assert convert_value("weights", "", "x") is None


def test_binary_config_file_is_a_one_line_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(RsdmlError, match="not a text"):
        TrainConfig.from_yaml(p)


def test_option_sets_come_from_the_field_declarations():
    """runtime/path sets are read from the fields' metadata, not listed a second time."""
    from dataclasses import fields

    from rsdml.config import PATH_FIELDS, RUNTIME_KEYS, TrainConfig, keys_with
    from rsdml.training.cells import RUNTIME_KEYS as CELL_RUNTIME_KEYS

    assert CELL_RUNTIME_KEYS == RUNTIME_KEYS == keys_with("runtime")
    assert {"device", "quiet", "cache_dir"} <= RUNTIME_KEYS and "epochs" not in RUNTIME_KEYS
    assert {f.name for f in fields(TrainConfig) if f.metadata.get("path")} == PATH_FIELDS
    assert {"data", "split", "weights", "cache_dir"} <= PATH_FIELDS


def test_every_device_option_offers_the_same_choices():
    import click

    from rsdml.cli.main import cli
    from rsdml.config import DEVICES

    seen = 0
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        for p in cmd.get_params(click.Context(cmd)):
            if p.name == "device":
                assert tuple(p.type.choices) == DEVICES, name
                seen += 1
    assert seen >= 6

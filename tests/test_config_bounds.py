"""Single-field bounds are declared on TrainConfig's fields (``option(..., ge=..., lt=...)``):
``validate()`` checks them through ``check_bounds``, ``--help`` shows them, and a wrong value
gets one line naming the flag, the bound and, where there is one, an example."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from rsdml.config import TrainConfig, bounds_rule
from rsdml.errors import RsdmlError
from rsdml.training.methods.params import param_classes

PARAMS = param_classes()

# (option, bad value, the one-line message it must start with)
BAD = [
    ("labeled_fraction", 0.0, "--labeled-fraction 0.0 must be in (0, 1), e.g. 0.2"),
    ("labeled_fraction", 1.0, "--labeled-fraction 1.0 must be in (0, 1), e.g. 0.2"),
    ("val_fraction", -0.1, "--val-fraction -0.1 must be in [0, 1)"),
    ("test_fraction", 1.0, "--test-fraction 1.0 must be in [0, 1)"),
    ("embedding_dim", 0, "--embedding-dim 0 must be a positive whole number"),
    ("margin", 1.6, "--margin 1.6 must be in [0, pi/2) radians, e.g. 0.5"),
    ("margin", -0.1, "--margin -0.1 must be in [0, pi/2) radians, e.g. 0.5"),
    ("temperature", 0.0, "--temperature 0.0 must be > 0, e.g. 0.05"),
    ("bnm_weight", -1.0, "--bnm-weight -1.0 must be >= 0"),
    ("bnm_logit_scale", 0.0, "--bnm-logit-scale 0.0 must be > 0"),
    ("epochs", 0, "--epochs 0 must be a positive whole number"),
    ("train_stages", -1, "--train-stages -1 must be in [0, 16]"),
    ("view_weak", 0, "--view-weak 0 must be in [1, 8]"),
    ("view_weak", 9, "--view-weak 9 must be in [1, 8]"),
    ("view_strong", -1, "--view-strong -1 must be in [0, 64]"),
    ("view_stages", 17, "--view-stages 17 must be in [0, 16]"),
    ("steps", -5, "--steps -5 must be a positive whole number"),
    ("batch_size", -4, "--batch-size -4 must be a positive whole number"),
    ("unlabeled_batch_size", 0, "--unlabeled-batch-size 0 must be a positive whole number"),
    ("lr", 0.0, "--lr 0.0 must be > 0, e.g. 0.001"),
    ("trunk_lr_mult", -1.0, "--trunk-lr-mult -1.0 must be >= 0 (0 freezes the trunk's weights"),
    ("momentum", 1.0, "--momentum 1.0 must be in [0, 1), e.g. 0.9"),
    ("weight_decay", -1e-4, "--weight-decay -0.0001 must be >= 0, e.g. 1e-4"),
    ("lr_step", 0, "--lr-step 0 must be a positive whole number"),
    ("lr_gamma", 0.0, "--lr-gamma 0.0 must be in (0, 1], e.g. 0.5"),
    ("lr_gamma", 1.5, "--lr-gamma 1.5 must be in (0, 1], e.g. 0.5"),
    ("warmup_epochs", -1.0, "--warmup-epochs -1.0 must be >= 0 (0 turns it off)"),
    ("head_warmup_epochs", -1.0, "--head-warmup-epochs -1.0 must be >= 0 (0 turns it off)"),
    ("bnm_warmup_epochs", -0.5, "--bnm-warmup-epochs -0.5 must be >= 0 (0 turns it off)"),
    ("image_size", 8, "--image-size 8 must be >= 16 pixels, e.g. 128"),
    ("cache_max_memory_gb", -1.0, "--cache-max-memory-gb -1.0 must be >= 0"),
    ("workers", -1, "--workers -1 must be >= 0"),
    ("eval_every", 0, "--eval-every 0 must be a positive whole number"),
    ("eval_batch_size", -1, "--eval-batch-size -1 must be a positive whole number"),
    ("checkpoint_every", 0, "--checkpoint-every 0 must be a positive whole number"),
]


@pytest.mark.parametrize("name, value, message", BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_a_value_out_of_bounds_gets_one_line_naming_the_flag(name, value, message):
    cfg = TrainConfig.from_dict({name: value}, params=PARAMS)
    with pytest.raises(RsdmlError) as exc:
        cfg.validate()
    text = str(exc.value)
    assert text.startswith(message) and "\n" not in text, text


def _closed_ends() -> list[tuple[str, float]]:
    """(option, its closed bound) for every option whose interval includes an end."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        for key in ("ge", "le"):
            if f.metadata.get(key) is not None:
                out.append((f.name, f.metadata[key]))
    return out


@pytest.mark.parametrize("name, bound", _closed_ends())
def test_the_closed_end_itself_is_accepted(name, bound):
    """No off-by-one between the declared bound and the check (e.g. --image-size 16 is fine)."""
    TrainConfig.from_dict({name: bound}, params=PARAMS).validate()


def test_the_closed_ends_are_found():
    assert {"image_size", "workers", "margin", "lr_gamma"} <= {n for n, _ in _closed_ends()}


def test_a_wrong_type_built_in_code_gets_a_message_not_a_type_error():
    with pytest.raises(RsdmlError, match=r"^--epochs 2\.5 must be a positive whole number$"):
        TrainConfig(epochs=2.5).validate()  # type: ignore[arg-type]
    with pytest.raises(RsdmlError, match=r"^--workers 'x' must be a whole number >= 0$"):
        TrainConfig(workers="x").validate()  # type: ignore[arg-type]
    with pytest.raises(RsdmlError, match=r"^--temperature 'hot' must be a number > 0"):
        TrainConfig(temperature="hot").validate()  # type: ignore[arg-type]


# Numeric options that take any value: everything else numeric must declare its bounds.
UNBOUNDED = {"seed"}


def test_every_numeric_option_declares_its_bounds():
    hints = typing.get_type_hints(TrainConfig)
    numeric = {f.name: f for f in dataclasses.fields(TrainConfig)
               if not f.metadata.get("internal")
               and {int, float} & {hints[f.name], *typing.get_args(hints[f.name])}}
    assert {n for n, _, _ in BAD} <= set(numeric)  # the table's options are all here
    undeclared = sorted(n for n, f in numeric.items() if bounds_rule(f) is None)
    assert undeclared == sorted(UNBOUNDED)
    assert {n for n, _, _ in BAD} | UNBOUNDED == set(numeric), "a bounded option has no test"


def test_the_defaults_and_the_method_parameters_pass_their_bounds():
    TrainConfig().validate()
    for params in PARAMS:
        for f in dataclasses.fields(params):
            if f.metadata.get("ge") is not None or f.metadata.get("gt") is not None:
                assert bounds_rule(f) is not None


def test_cross_field_checks_stay():
    with pytest.raises(RsdmlError, match="add up to"):
        TrainConfig(protocol="inductive", labeled_fraction=0.5, val_fraction=0.3,
                    test_fraction=0.3).validate()
    with pytest.raises(RsdmlError, match="--test-fraction must be > 0 under the inductive"):
        TrainConfig(protocol="inductive", test_fraction=0.0).validate()
    TrainConfig(protocol="transductive", test_fraction=0.0).validate()  # ignored there


def test_help_shows_the_declared_bounds(capsys):
    from clihelp import run_cli

    code, out, _ = run_cli(["train", "--help"], capsys)
    flat = " ".join(out.split())
    assert code == 0
    assert "Must be in (0, 1). [default: 0.2]" in flat  # --labeled-fraction
    assert "Must be in [0, pi/2) radians." in flat  # --margin
    assert "Labelled images per step. Must be a positive whole number." in flat
    assert "snca: memory-bank momentum. Must be in [0, 1)." in flat  # a method's parameter

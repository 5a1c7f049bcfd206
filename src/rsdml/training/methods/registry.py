"""The method registry: adding a method is one module and one line here.

A method with hyper-parameters declares them in its module as a dataclass of
:func:`rsdml.config.option` fields (``Method.params_class``); registering the method registers
them: they become ``rsdml train`` flags and YAML keys, and :func:`check_method` checks them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from torch import Tensor

from rsdml.config import TrainConfig, check_bounds
from rsdml.errors import RsdmlError
from rsdml.training.methods.base import Method, make_params
from rsdml.training.methods.consistency import FixMatch, FreeMatch, HRMatch
from rsdml.training.methods.margin_softmax import NormSoftmax, NSMMargin
from rsdml.training.methods.regularized import HRS2DML, EntMin, FastBNM
from rsdml.training.methods.snca import SNCA
from rsdml.training.methods.triplet import Triplet

log = logging.getLogger(__name__)

METHODS: dict[str, type[Method]] = {
    "hr-s2dml": HRS2DML,
    "nsm-margin": NSMMargin,
    "normsoftmax": NormSoftmax,
    "triplet": Triplet,
    "snca": SNCA,
    "entmin": EntMin,
    "fbnm": FastBNM,
    "fixmatch": FixMatch,
    "freematch": FreeMatch,
    "hr-match": HRMatch,
}


#: ``--method auto``: resolved by :func:`check_method` and recorded in config.yaml.
AUTO = "auto"


def auto_method(cfg: TrainConfig) -> str:
    """The default method: hr-match, which learnt most from the unlabelled images in the
    measurements of docs/results.md ("Consistency methods"); fast mode has cached features and
    no pixels for its views, so there the paper's hr-s2dml."""
    return "hr-s2dml" if cfg.freeze_backbone else "hr-match"


def param_classes() -> tuple[type, ...]:
    """The registered methods' parameter classes (each once), to pass to the options loader
    (``TrainConfig.from_dict(..., params=param_classes())``) and the CLI."""
    out: list[type] = []
    owner: dict[str, str] = {}
    core = set(TrainConfig.field_names())
    for name, cls in METHODS.items():
        params = cls.params_class
        if params is None or params in out:
            continue
        for f in dataclasses.fields(params):
            # A programming error, not a user's: two declarations of one flag.
            if f.name in core or f.name in owner:
                raise RuntimeError(f"method {name!r} declares option {f.name!r}, which "
                                   f"{owner.get(f.name, 'TrainConfig')} already has")
            owner[f.name] = f"method {name!r}"
        out.append(params)
    return tuple(out)


def param_owners() -> dict[str, list[str]]:
    """option name -> the methods that use it (for messages)."""
    out: dict[str, list[str]] = {}
    for name, cls in METHODS.items():
        if cls.params_class is not None:
            for f in dataclasses.fields(cls.params_class):
                out.setdefault(f.name, []).append(name)
    return out


def check_method(cfg: TrainConfig) -> TrainConfig:
    """The method is registered and its parameters are valid; returns the config with exactly
    the method's parameters (defaults filled in, so config.yaml records them). A parameter of
    another method is dropped, with a warning when it is not that method's default."""
    if cfg.method == AUTO:
        cfg = cfg.replace(method=auto_method(cfg))
    if cfg.method not in METHODS:
        raise RsdmlError(
            f"--method {cfg.method!r} is unknown; choose one of {', '.join(sorted(METHODS))}"
        )
    owners = param_owners()
    unknown = sorted(k for k in cfg.method_params if k not in owners)
    if unknown:
        raise RsdmlError(f"option(s) {', '.join(unknown)} belong to no registered method; "
                         "remove them")
    own_class = METHODS[cfg.method].params_class
    own = make_params(own_class, cfg.method_params)
    if own is not None:
        check_bounds(own)
    own_names = {f.name for f in dataclasses.fields(own_class)} if own_class else set()
    for key, value in sorted(cfg.method_params.items()):
        if key in own_names:
            continue
        other = METHODS[owners[key][0]].params_class
        assert other is not None
        check_bounds(make_params(other, {key: value}))
        if value != _default(other, key):
            log.warning("--%s applies to --method %s; ignored for %s", key.replace("_", "-"),
                        "/".join(owners[key]), cfg.method)
    values: dict[str, Any] = dataclasses.asdict(own) if own is not None else {}
    return cfg.replace(method_params=values)


def _default(params_class: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(params_class) if f.name == name)


def create_method(cfg: TrainConfig, num_classes: int, labeled_labels: Tensor) -> Method:
    return METHODS[cfg.method](cfg, num_classes, labeled_labels)

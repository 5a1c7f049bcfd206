"""The method registry: adding a method is one module, its parameter class (if it has one)
in :mod:`rsdml.training.methods.params`, and one line here plus one in that module's catalogue.

A method with hyper-parameters declares them as a dataclass of :func:`rsdml.config.option`
fields (``Method.params_class``); registering the method registers them: they become
``rsdml train`` flags and YAML keys, and :func:`check_method` checks them. The names and
parameter classes live torch-free in ``params.CATALOGUE`` (for the CLI's help and the options
loader); the classes here, and this module checks at import that both agree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

from torch import Tensor

from rsdml.config import TrainConfig, check_bounds
from rsdml.errors import RsdmlError
from rsdml.training.methods.base import Method, make_params
from rsdml.training.methods.consistency import FixMatch, FreeMatch, HRMatch
from rsdml.training.methods.margin_softmax import NormSoftmax, NSMMargin
from rsdml.training.methods.params import CATALOGUE, param_classes, param_owners
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


__all__ = ["AUTO", "METHODS", "auto_method", "check_method", "create_method", "param_classes",
           "param_owners", "register", "registered"]


def _check_catalogue() -> None:
    """METHODS and the torch-free catalogue name the same methods with the same parameter
    classes (a programming error otherwise: the CLI would offer flags the method ignores)."""
    if list(METHODS) != list(CATALOGUE):
        raise RuntimeError(f"registry.METHODS {sorted(METHODS)} and params.CATALOGUE "
                           f"{sorted(CATALOGUE)} must list the same methods")
    for name, cls in METHODS.items():
        if cls.params_class is not CATALOGUE[name]:
            raise RuntimeError(f"method {name!r}: params_class {cls.params_class} differs from "
                               f"params.CATALOGUE's {CATALOGUE[name]}")


_check_catalogue()


def register(name: str, cls: type[Method]) -> None:
    """Add (or replace) method ``name`` in both halves of the registry, so its flags and its
    class stay together (a plugin, or a test's toy method through :func:`registered`)."""
    before = _entry(name)
    METHODS[name] = cls
    CATALOGUE[name] = cls.params_class
    try:
        param_classes()  # a flag declared twice is refused now, not at the next --help
    except RuntimeError:
        _restore(name, before)
        raise


@contextlib.contextmanager
def registered(name: str, cls: type[Method]) -> Iterator[None]:
    """:func:`register` for the duration of a ``with`` block; what was there before comes back."""
    before = _entry(name)
    register(name, cls)
    try:
        yield
    finally:
        _restore(name, before)


def _entry(name: str) -> tuple[type[Method], type | None] | None:
    return (METHODS[name], CATALOGUE[name]) if name in METHODS else None


def _restore(name: str, entry: tuple[type[Method], type | None] | None) -> None:
    METHODS.pop(name, None)
    CATALOGUE.pop(name, None)
    if entry is not None:
        METHODS[name], CATALOGUE[name] = entry


#: ``--method auto``: resolved by :func:`check_method` and recorded in config.yaml.
AUTO = "auto"


def auto_method(cfg: TrainConfig) -> str:
    """The default method: hr-match, which learnt most from the unlabelled images in the
    measurements of docs/results.md ("Consistency methods"), fine-tuned and in fast mode (on
    cached views; chosen there by `rsdml tune` on held-out labelled images,
    configs/tune_aid150_method.yaml)."""
    return "hr-match"


def check_method(cfg: TrainConfig) -> TrainConfig:
    """The method is registered and its parameters are valid; returns the config with exactly
    the method's parameters (defaults filled in, so config.yaml records them). A parameter of
    another method is dropped when it has that method's default (an old config.yaml holds
    them all) and refused when it is set: the chosen method would not read it."""
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
        if value != _default(other, key):  # another method's default: an old config, dropped
            raise RsdmlError(f"--{key.replace('_', '-')} applies to --method "
                             f"{'/'.join(owners[key])}; --method {cfg.method} does not use it: "
                             "remove it or choose one of those methods")
    values: dict[str, Any] = dataclasses.asdict(own) if own is not None else {}
    return cfg.replace(method_params=values)


def _default(params_class: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(params_class) if f.name == name)


def create_method(cfg: TrainConfig, num_classes: int, labeled_labels: Tensor) -> Method:
    return METHODS[cfg.method](cfg, num_classes, labeled_labels)

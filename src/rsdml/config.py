"""The training configuration: one typed dataclass whose fields map one-to-one to YAML keys
and CLI flags (``labeled_fraction`` <-> ``labeled_fraction:`` <-> ``--labeled-fraction``).

The CLI builds its options from these fields, so a new option is one field here.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from rsdml.data.split import PROTOCOLS
from rsdml.errors import RsdmlError
from rsdml.fsutil import write_text_atomic

PRETRAINED = ("imagenet", "none")
DEVICES = ("auto", "cpu", "cuda")
CACHE_MODES = ("auto", "memory", "mmap")
DEVICE_CACHE_MODES = ("auto", "off")
AMP_MODES = ("auto", "off", "bf16")
SCHEDULES = ("cosine", "step")
OPTIMIZERS = ("adamw", "sgd")
#: --lr when not given, per optimiser (AdamW's steps do not scale with the loss's 1/tau).
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.1}
BN_MODES = ("auto", "train", "frozen")
#: What one epoch is: a pass over the larger of the labelled set and the unlabelled pool, or
#: over the labelled set (the paper's; with few labels an epoch is then a handful of steps).
EPOCH_UNITS = ("pool", "labeled")


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field that is an option (flag and YAML key): its default, its help text and
    optionally ``choices`` or bounds ``ge``/``gt``/``le``/``lt`` (checked by :func:`check_bounds`
    and shown in ``--help``; ``unit``, ``example`` and ``note`` complete the message), and the
    kinds it belongs to: ``runtime=True`` (cannot change a run's numbers) or ``path=True`` (a
    file or folder, made absolute). TrainConfig's fields and the methods' parameter classes are
    declared with it; the sets of options and their checks are read from it (:func:`keys_with`,
    :func:`check_bounds`), never listed again elsewhere."""
    return field(default=default, metadata={"help": help, **kw})


class Bound(float):
    """A bound that messages spell by name (``pi/2``, not 1.5707963267948966)."""

    text: str

    def __new__(cls, value: float, text: str) -> Bound:
        self = super().__new__(cls, value)
        self.text = text
        return self

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


HALF_PI = Bound(math.pi / 2, "pi/2")


_opt = option


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``RUN/config.yaml``."""

    # --- data and split
    data: str | None = _opt(None, "Image folder with one sub-folder per class, or the name "
                            "of a downloaded data set (`rsdml datasets list`).", path=True)
    out: str | None = _opt(None, "Run folder to create (checkpoints, metrics, logs).", path=True,
                           metavar="RUN")
    protocol: str = _opt(
        "transductive",
        "transductive: unlabelled pool = test images (paper); inductive: disjoint "
        "labelled/unlabelled/val/test.",
        choices=PROTOCOLS,
    )
    labeled_fraction: float = _opt(0.2, "Fraction of each class that is labelled.", gt=0.0,
                                   lt=1.0, example="0.2")
    val_fraction: float = _opt(0.1, "Inductive protocol: fraction of each class for validation.",
                               ge=0.0, lt=1.0)
    test_fraction: float = _opt(0.2, "Inductive protocol: fraction of each class for test.",
                                ge=0.0, lt=1.0)
    split: str | None = _opt(None, "Reuse a split.csv from an earlier run (same images, roles).",
                             path=True)
    labels: str | None = _opt(
        None, "CSV of labelled images (columns path,class; `rsdml label` writes it): those rows "
        "are labelled, every other image under --data is unlabelled (no test labels).",
        path=True)
    seed: int = _opt(0, "Seed for the split, initialisation, sampling and augmentation.")
    strict: bool = _opt(False, "Fail on corrupt images or empty class folders instead of skipping.")
    # --- method and model
    method: str = _opt(
        "auto", "Training method (`rsdml list` shows them). auto = hr-match (pseudo-labels on "
        "weak/strong views plus the high-rankness term; in fast mode on cached views); "
        "config.yaml records the one used.")
    backbone: str = _opt("resnet18", "CNN trunk (`rsdml list` shows them).")
    pretrained: str = _opt("imagenet", "Initial trunk weights.", choices=PRETRAINED)
    weights: str | None = _opt(None, "Local state dict for the trunk (overrides --pretrained).",
                               path=True)
    embedding_dim: int = _opt(128, "Embedding dimension D.", gt=0)
    mlp_head: bool = _opt(False, "Use a 2-layer MLP instead of one Linear layer as the head.")
    freeze_backbone: bool | None = _opt(
        None, "Fast mode: freeze the trunk, cache its features (and its views, for the view "
        "methods) once, train only head and loss. Default: on a CPU with a pretrained trunk (the "
        "best accuracy per minute there, docs/results.md), else off (the whole network trains).")
    train_stages: int = _opt(
        0, "Fast mode: the trunk's last N stages train too (partial fine-tuning), on cached "
        "activations at their input, with views made there; BatchNorm statistics kept. 0 = only "
        "the head trains.", ge=0, le=16)
    view_weak: int = _opt(
        8, "Fast mode with a view method (fixmatch, freematch, hr-match): weak views cached per "
        "image, the first N of the 8 symmetries of the square (1 = the image only).",
        ge=1, le=8)
    view_strong: int = _opt(
        4, "Fast mode with a view method: strong views cached per image (seeded, so a rebuild "
        "gives the same ones).", ge=0, le=64)
    view_stages: int | None = _opt(
        None, "Fast mode with a view method: views are made at the input of the trunk's last N "
        "stages, which run once per view while the cache builds (0 = at the pixels: the whole "
        "trunk per view; default 2 for efficientnet_lite0, 1 for resnet18).", ge=0, le=16)
    # --- losses
    margin: float = _opt(0.5, "Additive angular margin m.", ge=0.0, lt=HALF_PI, unit="radians",
                         example="0.5")
    temperature: float = _opt(0.05, "Softmax temperature tau.", gt=0.0, example="0.05")
    bnm_weight: float = _opt(1.0, "Weight lambda of the high-rankness (BNM) term.", ge=0.0)
    bnm_logit_scale: float | None = _opt(
        None, "Scale s of the cosines in the unlabelled softmax (default 1/temperature).", gt=0.0
    )
    #: Hyper-parameters a method declares itself (``rsdml.training.methods``): option name ->
    #: value, e.g. ``{"triplet_margin": 0.1}``. Flags and YAML keys like the fields here (the
    #: YAML file holds them at the top level); the method registry checks and fills them.
    method_params: dict[str, Any] = field(default_factory=dict, metadata={"internal": True})
    # --- optimisation
    epochs: int = _opt(
        30, "Epochs; an epoch is --epoch-unit (by default one pass over the unlabelled pool, "
        "so the unlabelled images are seen once an epoch whatever the number of labels).", gt=0)
    epoch_unit: str = _opt(
        "pool", "pool: an epoch is one pass over the larger of the labelled set and the "
        "unlabelled pool; labeled: one pass over the labelled set (the paper's).",
        choices=EPOCH_UNITS)
    steps: int | None = _opt(
        None, "Training budget in optimiser steps (instead of --epochs; the last epoch may be "
        "partial). Warm-ups, schedules and --eval-every stay in epochs of --epoch-unit.", gt=0)
    batch_size: int = _opt(128, "Labelled images per step.", gt=0)
    unlabeled_batch_size: int = _opt(128, "Unlabelled images per step.", gt=0)
    optimizer: str = _opt(
        "adamw", "adamw, or sgd (Nesterov; the paper's). SGD's step grows with the loss's "
        "1/temperature = 20 and wrecks a fine-tuned trunk at the paper's lr.", choices=OPTIMIZERS
    )
    lr: float | None = _opt(
        None, "Learning rate of the head and the class weights (default: 0.001 for adamw, 0.1 "
        "for sgd).", gt=0.0, example="0.001"
    )
    trunk_lr_mult: float | None = _opt(
        None, "The trunk's learning rate is --lr times this (default: 0.1 for a pretrained "
        "trunk, which a new head's rate would distort; 1 from random initialisation).",
        ge=0.0, note="0 freezes the trunk's weights; --freeze-backbone also caches its features"
    )
    momentum: float = _opt(0.9, "SGD (Nesterov) momentum; AdamW's beta1.", ge=0.0, lt=1.0,
                           example="0.9")
    weight_decay: float = _opt(1e-4, "Weight decay (decoupled for adamw; not applied to norm "
                               "and bias parameters).", ge=0.0, example="1e-4")
    schedule: str = _opt(
        "cosine", "Learning-rate decay after the warm-up: cosine (to 0 at the last epoch) or step "
        "(times --lr-gamma every --lr-step epochs, the paper's).", choices=SCHEDULES
    )
    lr_step: int = _opt(30, "--schedule step: period in epochs.", gt=0)
    lr_gamma: float = _opt(0.5, "--schedule step: factor.", gt=0.0, le=1.0, example="0.5")
    warmup_epochs: float = _opt(
        2.0, "Linear learning-rate warm-up in epochs (the trunk's starts after the head warm-up).",
        ge=0.0, note="0 turns it off"
    )
    head_warmup_epochs: float = _opt(
        3.0, "Train only the head and class weights on the fixed trunk for this many epochs "
        "first: a random head's gradients would distort pretrained features.",
        ge=0.0, note="0 turns it off"
    )
    bnm_warmup_epochs: float = _opt(
        10.0, "Ramp the weight of the unlabelled term linearly from 0 to --bnm-weight over this "
        "many epochs (early predictions are noise).", ge=0.0, note="0 turns it off"
    )
    bn: str = _opt(
        "auto", "BatchNorm of the trunk while training: train (batch statistics, running "
        "averages updated), frozen (the running statistics kept as they are); auto = frozen for "
        "a pretrained trunk, train from random initialisation.", choices=BN_MODES
    )
    # --- images and pipeline
    image_size: int | None = _opt(
        None, "Images are resized to SIZE x SIZE (default: 256 on a CUDA GPU; on a CPU 150 in "
        "fast mode, measured best for its time on AID, and 128 when the trunk fine-tunes: 256 "
        "px at the default batch sizes needs over 10 GB of RAM).", ge=16, unit="pixels",
        example="128")
    bands: str = _opt(
        "rgb", "Bands the network sees: rgb (3 bands at 8 bit: the first three, 16-bit data "
        "stretched), all (every band at the data's bit depth, uint8 or uint16) or band numbers "
        "counted from 1, e.g. 4,3,2,8 (docs/data.md).")
    rgb_bands: str | None = _opt(
        None, "With --bands all or a list: the band numbers of red, green and blue (e.g. 4,3,2 "
        "for Sentinel-2), mapped to the pretrained first convolution and used for thumbnails "
        "(default: the first three bands).")
    extra_augment: bool = _opt(False, "Add RS augmentations: vertical flip, 90-degree rotations.")
    cache: str = _opt(
        "auto", "Decoded-image cache: memory, mmap (file), or auto by size.", choices=CACHE_MODES,
        runtime=True,
    )
    cache_dir: str | None = _opt(None, "Cache folder (default ~/.cache/rsdml or $RSDML_CACHE).",
                                 path=True, runtime=True)
    cache_max_memory_gb: float = _opt(4.0, "Above this size (GB) the cache goes to a "
                                      "memory-mapped file.", ge=0.0, runtime=True)
    device_cache: str = _opt(
        "auto", "auto: on CUDA, hold the decoded images in GPU memory when they fit in a quarter "
        "of the free memory (no host copies per step); off: keep them in host memory.",
        choices=DEVICE_CACHE_MODES,
    )
    workers: int = _opt(0, "Threads that decode images while the cache builds (0 = auto).",
                        ge=0, runtime=True)
    device: str = _opt("auto", "Training device.", choices=DEVICES, runtime=True)
    amp: str = _opt("auto", "Mixed precision: auto = bf16 autocast on CUDA GPUs with bf16, float32 "
                    "on a CPU; bf16 = bf16 also on a CPU (1.5-1.9x faster on CPUs with AMX or "
                    "AVX512-BF16); off = float32. Losses run in float32.", choices=AMP_MODES)
    compile: bool = _opt(False, "torch.compile the network (CUDA).", runtime=True)
    sync_bn: bool = _opt(
        False, "Under torchrun on CUDA GPUs: BatchNorm statistics over the global batch "
        "(SyncBatchNorm) instead of each rank's slice; only matters while the trunk's "
        "BatchNorm trains (--bn train)."
    )
    # --- evaluation and logging
    eval_every: int = _opt(10, "Evaluate every N epochs (and always at the end).", gt=0)
    eval_batch_size: int = _opt(256, "Batch size for embedding extraction.", gt=0, runtime=True)
    checkpoint_every: int = _opt(1, "Save RUN/checkpoints/last.pt every N epochs.", gt=0,
                                 runtime=True)
    report: bool = _opt(True, "Write eval/report.html with its figures at the end (t-SNE etc.).",
                        runtime=True)
    quiet: bool = _opt(False, "No progress bars.", runtime=True)

    # ------------------------------------------------------------------ helpers
    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def trunk_lr_factor(self) -> float:
        if self.trunk_lr_mult is not None:
            return self.trunk_lr_mult
        return 0.1 if self.trunk_pretrained else 1.0

    @property
    def trunk_pretrained(self) -> bool:
        return bool(self.weights) or self.pretrained != "none"

    @property
    def bn_frozen(self) -> bool:
        """``--bn auto``: keep a pretrained trunk's statistics (augmented batches would drift
        them even at lr 0); a randomly initialised trunk needs batch statistics to train."""
        return self.bn == "frozen" or (self.bn == "auto" and self.trunk_pretrained)

    @property
    def cache_max_memory_bytes(self) -> int:
        """``--cache-max-memory-gb`` in bytes: above it caches are memory-mapped, not loaded."""
        return int(self.cache_max_memory_gb * 2**30)

    @property
    def logit_scale_u(self) -> float:
        return self.bnm_logit_scale if self.bnm_logit_scale is not None else 1.0 / self.temperature

    def to_dict(self) -> dict[str, Any]:
        """Option name -> value, the method's parameters at the top level (as in YAML)."""
        out: dict[str, Any] = {}
        for name, value in dataclasses.asdict(self).items():
            if name == "method_params":
                out.update(value)
            else:
                out[name] = value
        return out

    def value(self, name: str) -> Any:
        """The value of option ``name``: a field, or a method parameter given (else None)."""
        if name in _option_fields(TrainConfig):
            return getattr(self, name)
        return self.method_params.get(name)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> list[str]:
        """The options that are fields here (not the methods' parameters)."""
        return list(_option_fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config",
                  params: Sequence[type] = ()) -> TrainConfig:
        """A config from any mapping of options (YAML, flags, a grid cell), through the one
        loader: keys with '-' or '_', values converted to each field's type. ``params``: the
        methods' parameter classes (``rsdml.training.methods.registry.param_classes()``)
        whose options may appear too."""
        values = config_values(values, source, params)
        own = _option_fields(cls)
        return cls(**{k: v for k, v in values.items() if k in own},
                   method_params={k: v for k, v in values.items() if k not in own})

    @classmethod
    def from_yaml(cls, path: str | Path, params: Sequence[type] = ()) -> TrainConfig:
        return cls.from_dict(load_yaml(path), source=str(path), params=params)

    def save_yaml(self, path: Path) -> None:
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    # ------------------------------------------------------------------ validation
    def validate(self) -> TrainConfig:
        """Check every value a user can get wrong; raise a one-line RsdmlError naming the fix.

        Choices and bounds are the fields' declarations; only checks across fields are written
        here. The method, its parameters and the backbone are the registries' to check
        (``rsdml.training.runner.validate_config`` runs all of it)."""
        for f in _option_fields(type(self)).values():
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise RsdmlError(
                    f"--{_flag(f.name)} {value!r} is not one of {', '.join(choices)}"
                )
        check_bounds(self)  # every single-field bound, as the fields declare it
        if self.train_stages and self.freeze_backbone is False:
            raise RsdmlError(f"--train-stages {self.train_stages} is partial fine-tuning in fast "
                             "mode: add --freeze-backbone (without it the whole trunk trains)")
        if self.labels and (self.split or self.protocol != "transductive"):
            raise RsdmlError("--labels makes its own split (the file's rows labelled, the rest "
                             "unlabelled, transductive): drop --split and --protocol")
        if self.protocol == "inductive":
            total = self.labeled_fraction + self.val_fraction + self.test_fraction
            if total >= 1.0 and not math.isclose(total, 1.0):
                raise RsdmlError(
                    f"labelled + val + test fractions add up to {total:.3f}; they must stay "
                    "below 1 to leave unlabelled images (lower --test-fraction or --val-fraction)"
                )
            if self.test_fraction <= 0.0:
                raise RsdmlError("--test-fraction must be > 0 under the inductive protocol")
        from rsdml.data.bands import Bands  # lazily: it imports torch

        Bands.parse(self.bands, self.rgb_bands)
        return self


def _flag(name: str) -> str:
    return name.replace("_", "-")


# --------------------------------------------------------------------------- the one loader
def keys_with(kind: str) -> frozenset[str]:
    """TrainConfig's options declared with ``kind=True`` (``runtime``, ``path``)."""
    return frozenset(f.name for f in fields(TrainConfig) if f.metadata.get(kind))


#: Fields that hold a file or folder path: text in YAML (a path given as a Path object is
#: accepted too), an empty value means "none" where the field is optional.
PATH_FIELDS = keys_with("path")
#: Options that cannot change a run's numbers (where it runs, how fast, what it prints): they
#: may differ between a grid and a run folder made earlier.
RUNTIME_KEYS = keys_with("runtime")
_BAND_FIELDS = frozenset({"bands", "rgb_bands"})
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_NONE = frozenset({"", "none", "null", "~"})


@functools.cache
def _option_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """name -> field for the options a dataclass declares (TrainConfig's internal ones left out)."""
    return {f.name: f for f in fields(cls) if not f.metadata.get("internal")}


@functools.cache
def _field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """field name -> (base type, optional); from the annotations, so a new field needs nothing."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[type, bool]] = {}
    for name in _option_fields(cls):
        hint = hints[name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = bool(typing.get_args(hint)) and len(args) < len(typing.get_args(hint))
        out[name] = (args[0] if optional else hint, optional)
    return out


def _declaring(name: str, params: Sequence[type]) -> type | None:
    """The class that declares option ``name``: TrainConfig or one of ``params``."""
    for cls in (TrainConfig, *params):
        if name in _option_fields(cls):
            return cls
    return None


def option_fields(params: Sequence[type] = ()) -> dict[str, dataclasses.Field[Any]]:
    """Every option: TrainConfig's fields, then those of the methods' parameter classes."""
    out: dict[str, dataclasses.Field[Any]] = {}
    for cls in (TrainConfig, *params):
        for name, f in _option_fields(cls).items():
            out.setdefault(name, f)
    return out


_BOUND_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "ge": lambda v, b: v >= b, "gt": lambda v, b: v > b,
    "le": lambda v, b: v <= b, "lt": lambda v, b: v < b,
}


def _bound_text(bound: Any) -> str:
    return f"{bound:g}" if isinstance(bound, float) and not isinstance(bound, Bound) else str(bound)


def bounds_rule(f: dataclasses.Field[Any], whole: bool = False) -> str | None:
    """What an option's declared bounds ask, in the words of its error and its ``--help``
    (``in (0, 1)``, ``>= 0``, ``a positive whole number``, ``in [0, pi/2) radians``); None
    without bounds. ``whole``: the option is an int."""
    m = f.metadata
    low = next(((k, m[k]) for k in ("ge", "gt") if m.get(k) is not None), None)
    high = next(((k, m[k]) for k in ("le", "lt") if m.get(k) is not None), None)
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    if low and high:
        rule = (f"in {'[' if low[0] == 'ge' else '('}{_bound_text(low[1])}, "
                f"{_bound_text(high[1])}{']' if high[0] == 'le' else ')'}")
    elif whole and low == ("gt", 0):
        rule = "a positive whole number"
    elif low or high:
        key, bound = low or high or ("", None)
        rule = f"{signs[key]} {_bound_text(bound)}"
    else:
        return None
    return f"{rule} {m['unit']}" if m.get("unit") else rule


def check_bounds(obj: Any) -> None:
    """The ``ge``/``gt``/``le``/``lt`` bounds that :func:`option` declares, for every option
    of the dataclass instance ``obj`` (a TrainConfig, a method's parameters); a one-line error
    naming the flag, the bound and, where the field gives them, an example and a note."""
    cls = type(obj)
    types = _field_types(cls)
    for name, f in _option_fields(cls).items():
        value = getattr(obj, name)
        whole = types[name][0] is int
        rule = bounds_rule(f, whole)
        if value is None or rule is None:
            continue
        kind_ok = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)
        if kind_ok and all(_BOUND_TESTS[k](value, f.metadata[k]) for k in _BOUND_TESTS
                           if f.metadata.get(k) is not None):
            continue
        if not kind_ok and not rule.startswith("a positive"):
            rule = f"{'a whole number' if whole else 'a number'} {rule}"
        example = f", e.g. {f.metadata['example']}" if f.metadata.get("example") else ""
        note = f" ({f.metadata['note']})" if f.metadata.get("note") else ""
        raise RsdmlError(f"--{_flag(name)} {value!r} must be {rule}{example}{note}")


def option_name(key: Any, source: str, params: Sequence[type] = ()) -> str:
    """The option a YAML key or flag name means (``eval-every``, ``eval_every``,
    ``--eval-every``), or a one-line error with the closest valid name. ``params``: the
    methods' parameter classes whose options count too."""
    name = str(key).strip().lstrip("-").replace("-", "_")
    known = list(option_fields(params))
    if name in known:
        return name
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RsdmlError(
        f"{source}: unknown key {str(key)!r}{hint}; valid keys are the `rsdml train --help` "
        "options, written with '-' or '_'"
    )


def config_values(values: Mapping[Any, Any], source: str = "config",
                  params: Sequence[type] = ()) -> dict[str, Any]:
    """The one way options come in (a YAML file, CLI flags, a resumed run's config.yaml, an
    experiment grid cell): field name -> value of the field's type; RsdmlError (exit 2, one
    line) for an unknown key, a key given twice or a value of the wrong type."""
    if not isinstance(values, Mapping):
        raise RsdmlError(f"{source} must hold a mapping of option: value")
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in values.items():
        name = option_name(key, source, params)
        if name in out:
            raise RsdmlError(
                f"{source}: {spelled[name]!r} and {str(key)!r} are the same option; keep one"
            )
        spelled[name] = str(key)
        out[name] = convert_value(name, value, f"{source}: {key}", params)
    return out


def convert_value(name: str, value: Any, where: str, params: Sequence[type] = ()) -> Any:
    """``value`` as the type of option ``name``: whole numbers, floats in any YAML spelling
    (``5e-2`` is text to PyYAML), true/false/yes/no, paths, choices; else a one-line error."""
    cls = _declaring(name, params)
    if cls is None:
        raise RsdmlError(f"{where}: unknown option {name!r}")
    base, optional = _field_types(cls)[name]
    text = value.strip() if isinstance(value, str) else None
    if value is None or (optional and text is not None and text.lower() in _NONE):
        if optional:
            return None
        raise RsdmlError(f"{where} needs a value (got nothing)")
    if name in PATH_FIELDS:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str):
            return value
        raise RsdmlError(f"{where} = {value!r} must be a path; write it in quotes")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if text is not None and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise RsdmlError(f"{where} = {value!r} must be true or false")
    if base is int:
        number = _number(value, text)
        if number is not None and float(number).is_integer():
            return int(number)
        raise RsdmlError(f"{where} = {value!r} must be a whole number")
    if base is float:
        number = _number(value, text)
        if number is not None:
            return float(number)
        raise RsdmlError(f"{where} = {value!r} must be a number (e.g. 0.1, 5e-2 or 1e-4)")
    choices = _option_fields(cls)[name].metadata.get("choices")
    if isinstance(value, bool) and choices:  # YAML 1.1 reads a bare off / on / no as a bool
        spelled = [c for c in choices if c in (_TRUE if value else _FALSE)]
        if spelled:
            return spelled[0]
    if name in _BAND_FIELDS and not isinstance(value, (str, bool)):
        # YAML reads `bands: 4` as a number and `bands: [4, 3, 2]` as a list
        items = value if isinstance(value, (list, tuple)) else [value]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            value = ",".join(str(v) for v in items)
    if not isinstance(value, str):
        raise RsdmlError(f"{where} = {value!r} must be text")
    if choices and value not in choices:
        if text is not None and text.lower() in choices:
            return text.lower()
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RsdmlError(f"{where} = {value!r} is not one of {', '.join(choices)}{hint}")
    return value


def _number(value: Any, text: str | None) -> float | int | None:
    """A finite int or float from a number or its text (any spelling float() reads)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if text is not None:
        try:
            number = float(text)
        except ValueError:
            return None
        if math.isfinite(number):
            return int(text) if text.lstrip("+-").isdigit() else number
    return None


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise RsdmlError(f"config file {p} does not exist; check the path given to --config")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise RsdmlError(f"config file {p} is not a text (UTF-8 YAML) file; check the path") from None
    except OSError as e:
        raise RsdmlError(f"cannot read config file {p} ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "syntax error"
        raise RsdmlError(f"config file {p} is not valid YAML ({first}); fix the file") from None
    if not isinstance(values, dict):
        raise RsdmlError(f"config file {p} must hold a mapping of option: value")
    return values

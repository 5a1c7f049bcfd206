"""The methods' own options and the catalogue of method names, without torch.

``rsdml train --help``, the options loader and the experiment grids need every method's flags
but none of its loss modules; keeping the parameter classes here lets them skip ``import torch``
(seconds). The method modules take their ``params_class`` from here, and
:mod:`rsdml.training.methods.registry` checks at import that its classes and this catalogue
agree, so a method is still declared once (``registry.register`` adds one to both).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rsdml.config import HALF_PI, TrainConfig, option

HR_VIEWS = ("strong", "weak")


@dataclass(frozen=True)
class ConsistencyParams:
    """What every consistency method reads (``--consistency-weight``); each method's own class
    below adds its options, so an option the chosen method does not read is refused."""

    consistency_weight: float = option(
        1.0, "fixmatch / freematch / hr-match: weight of the pseudo-label term on the strong "
        "view (ramped up with --bnm-warmup-epochs, like the high-rankness term).", ge=0.0)
    distribution_alignment: bool = option(
        False, "fixmatch / freematch / hr-match: multiply the weak view's probabilities by the "
        "labelled images' class frequencies over their running mean, then renormalise "
        "(ReMixMatch's distribution alignment), so the pseudo-labels keep the labelled class "
        "balance.")
    instance_weight: float | None = option(
        None, "fixmatch / freematch / hr-match: weight of an instance-discrimination term "
        "(InfoNCE, temperature 0.1) between each unlabelled image's strong and weak views, "
        "which keeps images of one class apart (copy detection); ramped like the others. "
        "Default in fast mode on cached views: 2 with one labelled image a class (median; "
        "label propagation on: it keeps the copies the larger --propagation-margin there "
        "costs), else 1 (chosen on held-out labelled images, docs/results.md); 0 when the "
        "trunk trains.", ge=0.0)
    propagation_weight: float | None = option(
        None, "fixmatch / freematch / hr-match: weight of a label-propagation term (Iscen et al. "
        "2019): each epoch the labels are diffused over the nearest-neighbour graph of every "
        "training image (the first time over the trunk's features in fast mode, then over the "
        "embeddings), and the strong view learns each unlabelled image's propagated class, "
        "weighted by its certainty. Default: 1 in fast mode on cached views (chosen on "
        "held-out labelled images, docs/results.md), 0 when the trunk trains.", ge=0.0)
    propagation_margin: float | None = option(
        None, "fixmatch / freematch / hr-match with --propagation-weight: additive angular "
        "margin on each image's propagated class in the propagation term, so an unlabelled "
        "image is pulled as close to its class as a labelled one, not only until the class is "
        "the likeliest. Default in fast mode on cached views, by the labelled images a class "
        "(median; the labelling loop's regime): 0.75 at 1, 0.5 at 2-5, else 0 (chosen on "
        "held-out labelled images, docs/results.md).", ge=0.0, lt=HALF_PI,
        unit="radians", example="0.5")
    propagation_every: int = option(
        1, "fixmatch / freematch / hr-match with --propagation-weight: run the label "
        "propagation every N epochs (between runs the classes of the last one stay); each "
        "run costs a neighbour search and a solve over every training image.", ge=1)
    teacher_ema: float = option(
        0.0, "fixmatch / freematch / hr-match: momentum of an EMA teacher (mean teacher): a "
        "moving average of the network and the class weights gives the weak view's "
        "pseudo-labels. 0: the student gives them (FixMatch).", ge=0.0, lt=1.0)


@dataclass(frozen=True)
class FixMatchParams(ConsistencyParams):
    """fixmatch's options: one confidence threshold."""

    threshold: float = option(
        0.95, "fixmatch / hr-match: probability the weak view's top class needs to become a "
        "pseudo-label (softmax of the scaled cosines).", gt=0.0, le=1.0)


@dataclass(frozen=True)
class FreeMatchParams(ConsistencyParams):
    """freematch's options: its thresholds adapt (no --threshold), by moving averages."""

    freematch_ema: float = option(
        0.99, "freematch: momentum of the moving averages behind its self-adaptive thresholds "
        "(0.999 in the paper, for 2^20 steps; 0.99 lets them follow a run of thousands).",
        ge=0.0, lt=1.0)
    fairness_weight: float = option(
        0.0, "freematch: weight of FreeMatch's self-adaptive fairness term on the accepted "
        "strong-view predictions (0.01 in USB; 0: off).", ge=0.0)


@dataclass(frozen=True)
class HRMatchParams(FixMatchParams):
    """hr-match's options: fixmatch's plus the view the high-rankness term sees."""

    hr_view: str = option(
        "strong", "hr-match: the unlabelled view whose prediction matrix the high-rankness "
        "term sees (weak: a graph through the weak view too, about a third more compute).",
        choices=HR_VIEWS)


@dataclass(frozen=True)
class SNCAParams:
    """The snca method's own options (``--snca-momentum``, YAML ``snca_momentum``)."""

    snca_momentum: float = option(0.5, "snca: memory-bank momentum.", ge=0.0, lt=1.0)


@dataclass(frozen=True)
class TripletParams:
    """The triplet method's own options (``--triplet-margin``, YAML ``triplet_margin``)."""

    triplet_margin: float = option(0.1, "triplet: margin of the triplet loss.", ge=0.0)


#: Method name -> its parameter class (None without one), in ``rsdml list`` order: the
#: torch-free half of the registry (``registry.METHODS`` holds the classes; both must agree).
CATALOGUE: dict[str, type | None] = {
    "hr-s2dml": None,
    "nsm-margin": None,
    "normsoftmax": None,
    "triplet": TripletParams,
    "snca": SNCAParams,
    "entmin": None,
    "fbnm": None,
    "fixmatch": FixMatchParams,
    "freematch": FreeMatchParams,
    "hr-match": HRMatchParams,
}


def param_classes() -> tuple[type, ...]:
    """The registered methods' parameter classes (each once), to pass to the options loader
    (``TrainConfig.from_dict(..., params=param_classes())``) and the CLI."""
    out: list[type] = []
    owner: dict[str, tuple[str, dataclasses.Field]] = {}
    core = set(TrainConfig.field_names())
    for name, params in CATALOGUE.items():
        if params is None or params in out:
            continue
        for f in dataclasses.fields(params):
            if f.name in owner and owner[f.name][1] is f:
                continue  # one declaration, inherited (FixMatchParams -> HRMatchParams)
            # A programming error, not a user's: two declarations of one flag.
            if f.name in core or f.name in owner:
                raise RuntimeError(f"method {name!r} declares option {f.name!r}, which "
                                   f"{owner[f.name][0] if f.name in owner else 'TrainConfig'} "
                                   "already has")
            owner[f.name] = (f"method {name!r}", f)
        out.append(params)
    return tuple(out)


def param_owners() -> dict[str, list[str]]:
    """option name -> the methods that use it (for messages)."""
    out: dict[str, list[str]] = {}
    for name, params in CATALOGUE.items():
        if params is not None:
            for f in dataclasses.fields(params):
                out.setdefault(f.name, []).append(name)
    return out

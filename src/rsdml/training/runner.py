"""What ``rsdml train`` / ``rsdml evaluate`` do, from a config to a finished run folder."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsdml.config import PATH_FIELDS, TrainConfig, config_values
from rsdml.data.cache import ImageCache, UndecodableImagesError, load_image_cache
from rsdml.data.split import (
    Split,
    SplitContract,
    check_data_root,
    check_images,
    make_split,
    read_split,
)
from rsdml.errors import RsdmlError
from rsdml.fsutil import write_json
from rsdml.models.embedding import EmbeddingNet, build_model
from rsdml.models.registry import check_backbone
from rsdml.training import distributed
from rsdml.training.bands import run_preprocess
from rsdml.training.callbacks import (
    Callback,
    Checkpoints,
    Console,
    EvalSets,
    Evaluation,
    MetricsLog,
    Spectrum,
    TensorBoard,
    TrainLog,
)
from rsdml.training.checkpoint import load_checkpoint, position_of
from rsdml.training.distributed import resolve_device  # noqa: F401  (re-exported)
from rsdml.training.inputs import (
    ActivationInputs,
    FeatureInputs,
    ImageInputs,
    image_inputs,
    place_model,
    uses_channels_last,
)
from rsdml.training.memory import check_memory
from rsdml.training.methods.registry import (
    METHODS,
    check_method,
    create_method,
    param_classes,
)
from rsdml.training.run_folder import RunFolder
from rsdml.training.sets import LabeledSet, UnlabeledSet
from rsdml.training.trainer import Trainer, cpu_has_native_bf16

log = logging.getLogger(__name__)

#: Options that may change when a run is resumed; any other change is refused.
RESUMABLE_KEYS = frozenset({
    "eval_every", "checkpoint_every", "quiet", "device", "workers", "cache",
    "cache_dir", "cache_max_memory_gb", "device_cache", "eval_batch_size", "compile", "out",
    "report", "data",  # data: the same images in a moved folder (split.csv must find them)
})
#: The budget: every rate is a function of it (the cosine ends at the last step), so changing
#: it on resume changes the schedule of the steps still to run; only with ``extend``.
BUDGET_KEYS = frozenset({"epochs", "steps"})


#: --image-size when not given, per device type: 256 px (the paper's) at the default batch
#: sizes needs over 10 GB of RAM on a CPU, more than a 16 GB laptop has to spare.
DEFAULT_IMAGE_SIZE = {"cuda": 256, "cpu": 128}
#: --image-size when not given in fast mode on a CPU, where only the trunk's one pass (and the
#: views) grows with the size: on AID at 5 % labels the default method gave kNN 0.683 at 64 px,
#: 0.802 at 128 and 0.849 at 150 (6 min from nothing); at 224 the trunk's pass alone takes
#: 11 min (docs/results.md, "Image size").
FAST_CPU_IMAGE_SIZE = 150


def default_image_size(cfg: TrainConfig) -> int:
    """``--image-size`` when not given (after fast mode is resolved)."""
    device = resolve_device(cfg.device).type
    return FAST_CPU_IMAGE_SIZE if device == "cpu" and cfg.freeze_backbone else DEFAULT_IMAGE_SIZE[device]


def default_fast_mode(cfg: TrainConfig) -> bool:
    """``--freeze-backbone`` when not given: on a CPU a pretrained trunk's cached features (and
    views) give more accuracy per minute than fine-tuning (docs/results.md, "Accuracy per
    minute"); a random trunk must train, and a GPU can afford fine-tuning."""
    if cfg.train_stages:
        return True
    return resolve_device(cfg.device).type == "cpu" and cfg.trunk_pretrained


def cached_view_defaults(cfg: TrainConfig) -> dict[str, Any]:
    """``--view-stages`` of fast mode's view methods, when not given: the backbone's."""
    if cfg.freeze_backbone and METHODS[cfg.method].uses_views and cfg.view_stages is None:
        from rsdml.training.views import default_view_stages

        return {"view_stages": default_view_stages(cfg.backbone)}
    return {}


#: The consistency methods' terms that fast mode on cached views turns on when the user does
#: not say: chosen on held-out labelled images (``configs/tune_aid150_propagation3.yaml``,
#: docs/results.md, "Levers"). Fine-tuning was not measured with them: 0 there. The instance
#: weight is filled in with the split (:func:`split_defaults`): heavier where labels are few.
FAST_VIEW_TERMS = {"instance_weight": 1.0, "propagation_weight": 1.0}

#: Fast mode's terms on cached views by the labelled images a class (their median over the
#: classes with labels), with label propagation on: (at most this median, terms). Few labels
#: get an angular margin on the propagated class (``--propagation-margin``); one label a class
#: a larger one, and a heavier instance term that keeps the altered copies the margin would
#: cost. Chosen on held-out labelled images at 1, 2, 5 and 13 labels a class and in the
#: labelling loop's first round of 30 and 60 labels (``benchmarks/bench_first_round.py``,
#: ``configs/tune_aid150_propagation_margin*.yaml``,
#: ``configs/tune_aid150_margin_instance.yaml``, docs/results.md "Levers").
FEW_LABEL_TERMS = ((1, {"propagation_margin": 0.75, "instance_weight": 2.0}),
                   (5, {"propagation_margin": 0.5, "instance_weight": 1.0}))
#: The same options with more labels a class (or label propagation off) on cached views.
MORE_LABEL_TERMS = {"propagation_margin": 0.0,
                    "instance_weight": FAST_VIEW_TERMS["instance_weight"]}
#: The options :func:`split_defaults` fills in, once a new run's split is made.
SPLIT_TERMS = tuple(FEW_LABEL_TERMS[0][1])


def _on_cached_views(cfg: TrainConfig) -> bool:
    """Fast mode on cached views: the trunk frozen and none of its stages training."""
    return bool(cfg.freeze_backbone) and not cfg.train_stages


def view_term_defaults(cfg: TrainConfig) -> TrainConfig:
    """``--propagation-weight`` (and, when the trunk trains, ``--instance-weight``) filled in
    where the user left them out (None): ``FAST_VIEW_TERMS`` in fast mode on cached views, else
    0. On cached views the instance weight waits for the split (:func:`split_defaults`)."""
    cached = _on_cached_views(cfg)
    fill = {k: (v if cached else 0.0) for k, v in FAST_VIEW_TERMS.items()
            if k in cfg.method_params and cfg.method_params[k] is None
            and not (cached and k in SPLIT_TERMS)}
    return cfg.replace(method_params={**cfg.method_params, **fill}) if fill else cfg


def unset_split_defaults(cfg: TrainConfig) -> list[str]:
    """The options ``cfg`` leaves to :func:`split_defaults` (the user did not set them)."""
    return [k for k in SPLIT_TERMS if k in cfg.method_params and cfg.method_params[k] is None]


def split_defaults(cfg: TrainConfig, split: Split, announce: bool = False) -> TrainConfig:
    """Defaults that depend on the labelled images, filled in once a new run's split is made
    (so config.yaml records them): in fast mode on cached views with label propagation on,
    ``FEW_LABEL_TERMS`` where the labels a class are few (the labelling loop's regime), else
    ``MORE_LABEL_TERMS``; when the trunk trains, 0. Each option
    the user set is kept. ``announce``: say so when the few-label terms are on."""
    unset = unset_split_defaults(cfg)
    if not unset:
        return cfg
    counts = np.bincount(split.labels[split.index("labeled")], minlength=split.num_classes)
    median = float(np.median(counts[counts > 0])) if counts.any() else math.inf
    cached = _on_cached_views(cfg)
    tier = next((terms for most, terms in FEW_LABEL_TERMS if median <= most), None)
    few = tier if cached and cfg.method_params.get("propagation_weight") else None
    values = few or (MORE_LABEL_TERMS if cached else dict.fromkeys(SPLIT_TERMS, 0.0))
    fill = {k: values[k] for k in unset}
    said = {k: v for k, v in fill.items() if few and v != MORE_LABEL_TERMS[k]}
    if said and announce:
        what = {"propagation_margin": "label propagation pulls with an angular margin",
                "instance_weight": "the instance term weighs more"}
        log.info("labelled images a class, median %g: %s; set %s to override", median,
                 " and ".join(f"{what[k]} (--{k.replace('_', '-')} {v:g})"
                              for k, v in said.items()), "either" if len(said) > 1 else "it")
    return cfg.replace(method_params={**cfg.method_params, **fill})


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """All a run's options must satisfy: the config's own checks, then the registries' (the
    method and its parameters, filled in with their defaults; the backbone). Defaults that
    depend on the device (fast mode, ``--image-size``) are filled in here, so config.yaml
    records them."""
    if cfg.freeze_backbone is None:
        cfg = cfg.replace(freeze_backbone=default_fast_mode(cfg))
    cfg = check_method(cfg.validate())
    check_backbone(cfg.backbone)
    cfg = cfg.replace(**cached_view_defaults(cfg))
    cfg = view_term_defaults(cfg)
    if cfg.image_size is None:
        cfg = cfg.replace(image_size=default_image_size(cfg))
    return cfg


def resume_config(run: RunFolder, overrides: dict[str, Any], extend: bool = False) -> TrainConfig:
    """The saved config with the few changes a resume allows (another device, evaluation
    cadence...), and with ``extend`` a new budget (--epochs / --steps)."""
    cfg = run.read_config()
    overrides = config_values(overrides, "options", param_classes())
    saved = check_method(cfg)  # the method's parameters with their defaults, as run
    if overrides.get("method") == "auto":  # the run's config.yaml given back: auto as resolved
        overrides["method"] = saved.method
    allowed = RESUMABLE_KEYS | (BUDGET_KEYS if extend else frozenset())
    differs = {k for k, v in overrides.items() if not _same_value(k, saved.value(k), v)}
    budget = sorted(differs & BUDGET_KEYS)
    if budget and not extend:
        flags = " and ".join(f"--{k} {overrides[k]}" for k in budget)
        raise RsdmlError(
            f"--resume {run.root}: {flags} changes the run's budget, and with it the learning "
            "rate of every step still to run (the schedule ends at the last step); add --extend "
            "to train on under the new budget (recorded in config_history.jsonl), or resume "
            "without it to finish the run as planned")
    changed = sorted(k for k in differs if k not in allowed)
    if changed:
        raise RsdmlError(
            f"--resume {run.root}: option(s) {', '.join('--' + k.replace('_', '-') for k in changed)} "
            f"differ from the saved config.yaml; a resumed run keeps its config (only "
            f"{', '.join(sorted('--' + k.replace('_', '-') for k in allowed - {'out'}))} may change"
            f"{'' if extend else '; --epochs and --steps with --extend'})"
        )
    return cfg.replace(**{k: v for k, v in overrides.items() if k in allowed and k != "out"})


def _same_value(name: str, saved: Any, given: Any) -> bool:
    """Whether an option given on resume is the saved one (paths compared as folders)."""
    if name in PATH_FIELDS and saved and given:
        return Path(saved).expanduser().resolve() == Path(given).expanduser().resolve()
    return bool(saved == given)


def build_split(cfg: TrainConfig) -> Split:
    """The run's split: reused from ``--split`` (under its contract) or made from a scan."""
    from rsdml.data.scan import scan_image_folder

    if not cfg.data:
        raise RsdmlError("no data folder given: add --data DIR (one sub-folder per class)")
    if cfg.split:
        what = f"--split {cfg.split}"
        split = read_split(cfg.split, protocol=cfg.protocol, what=what)
        _check_split_options(split, cfg, what)
        check_data_root(split, cfg.data, what)
        check_images(split, cfg.data, what, "use the data folder the split was made for")
        if split.contract is None:  # an older file: record what this run now knows of it
            split = dataclasses.replace(split, contract=SplitContract(
                cfg.protocol, data_root=str(Path(cfg.data).expanduser().resolve())))
    elif cfg.labels:
        from rsdml.labelling.labelled import split_from_labels

        split = split_from_labels(cfg)
    else:
        scan = scan_image_folder(cfg.data, strict=cfg.strict, progress=not cfg.quiet,
                                 min_per_class=2 if cfg.protocol == "inductive" else 1)
        split = make_split(scan.paths, scan.labels, scan.classes, protocol=cfg.protocol,
                           labeled_fraction=cfg.labeled_fraction, val_fraction=cfg.val_fraction,
                           test_fraction=cfg.test_fraction, seed=cfg.seed, data_root=scan.root)
    if split.num_classes < 2:
        raise RsdmlError(
            f"{cfg.split or cfg.data} holds one class ({split.classes[0]}); metric learning "
            "needs at least 2 classes (one sub-folder per class): add class folders"
        )
    return split


def _check_split_options(split: Split, cfg: TrainConfig, what: str) -> None:
    """A reused split fixes the fractions it was made with; config.yaml must not say others."""
    if split.contract is None:
        return
    for name, made in split.contract.fractions().items():
        given = getattr(cfg, name)
        if not math.isclose(given, made):
            flag = "--" + name.replace("_", "-")
            raise RsdmlError(
                f"{what} was made with {flag} {made}, but {flag} is {given}; drop {flag} (the "
                "split's is used) or make a new split"
            )


def _absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Paths a run refers to later, made absolute: evaluate and resume work from any folder."""
    changes = {k: str(Path(v).expanduser().absolute())
               for k in sorted(PATH_FIELDS - {"out"}) if (v := getattr(cfg, k))}
    return cfg.replace(**changes)


def load_cache(cfg: TrainConfig, split: Split, run: RunFolder | None = None) -> ImageCache:
    from rsdml.data.bands import InputSpec
    from rsdml.training.bands import band_selection

    assert cfg.data is not None
    spec = InputSpec.load(run.bands) if run is not None and run.bands.is_file() else None
    return load_image_cache(
        cfg.data, split.paths, cfg.image_size, mode=cfg.cache, cache_dir=cfg.cache_dir,
        max_memory_bytes=cfg.cache_max_memory_bytes, workers=cfg.workers,
        progress=not cfg.quiet, bands=band_selection(cfg, spec),
    )


@dataclass
class Session:
    """Everything built from a run folder: the pieces the trainer and evaluator share."""

    cfg: TrainConfig
    run: RunFolder
    split: Split
    device: torch.device
    model: EmbeddingNet
    inputs: ImageInputs | FeatureInputs | ActivationInputs
    #: The decoded images and how they become the model's input (the copy-detection measure
    #: runs the whole network on altered copies of them).
    cache: ImageCache | None = None
    normalizer: Callable[[torch.Tensor], torch.Tensor] | None = None
    #: Fast mode's trunk-feature key (``rsdml.training.frozen.feature_key``) where the trunk
    #: never trains, so the copies' trunk features can be cached too; else None.
    feature_key: str | None = None


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.long)


def build_session(cfg: TrainConfig, run: RunFolder, split: Split, *, train: bool) -> Session:
    from rsdml.training.bands import train_augment

    device = resolve_device(cfg.device)
    cache = load_cache(cfg, split, run)
    preprocess = run_preprocess(cfg, run, split, cache, create=train)  # saved with the run
    spec, normalizer = preprocess.spec, preprocess.normalizer()
    torch.manual_seed(cfg.seed)
    model = place_model(build_model(cfg, spec).to(device), device)
    if cfg.sync_bn and distributed.current().world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[assignment]
    key = None
    if cfg.freeze_backbone:
        from rsdml.training.frozen import feature_key, frozen_features

        if _on_cached_views(cfg):  # the trunk never trains: the copies' features are cached too
            key = feature_key(cfg, split, preprocess)
        for p in model.trunk.parameters():
            p.requires_grad_(False)
        if cfg.train_stages:  # partial fine-tuning: the last stages train on cached activations
            from rsdml.training.frozen import frozen_activations

            acts, mapped, cut = frozen_activations(cfg, split, model, cache, device, preprocess)
            for p in cut.upper_parameters():
                p.requires_grad_(True)
            inputs: ImageInputs | FeatureInputs | ActivationInputs = ActivationInputs(
                acts, cut, device, mapped=mapped)
        elif METHODS[cfg.method].uses_views:  # evaluation too: view 0 is the image itself
            from rsdml.training.frozen import frozen_views

            feats, mapped = frozen_views(cfg, split, model, cache, device, preprocess, key=key)
            inputs = FeatureInputs(feats, device, weak=cfg.view_weak, mapped=mapped)
        else:
            feats = frozen_features(cfg, split, model, cache, device, preprocess, key=key)
            inputs = FeatureInputs(feats, device)
    else:
        augment = train_augment(cfg, spec) if train else None
        views = None
        if METHODS[cfg.method].uses_views:  # evaluation too: view 0 is the image itself
            from rsdml.data.strong_augment import ViewAugment

            # 8-bit RGB (ImageNet statistics): RandAugment's colour operations; else band ones
            band_norm = spec.normalizer() if spec is not None else None
            views = (ViewAugment(False, band_norm), ViewAugment(True, band_norm))
        inputs = image_inputs(cache, device, cfg.device_cache, augment, normalizer, views)
    return Session(cfg, run, split, device, model, inputs, cache, normalizer, key)


def train(cfg: TrainConfig, resume: str | Path | None = None,
          overrides: dict[str, Any] | None = None, extend: bool = False) -> dict[str, Any]:
    """Run (or continue) training, then the full evaluation; returns the final metrics.

    The run folder is locked while this runs. A new run whose start fails (no pretrained
    weights, a bad weights file, ...) is removed again, so the same command can be retried.
    """
    from rsdml.data.datasets import resolve_data

    t_start = time.monotonic()
    resumed: RunFolder | None = None
    if resume is not None:
        resumed = RunFolder.open(resume, "--resume")
        if overrides and overrides.get("data"):  # a data set name: its downloaded copy
            overrides = {**overrides, "data": resolve_data(str(overrides["data"]))}
        cfg = validate_config(resume_config(resumed, overrides or {}, extend))
    else:
        cfg = validate_config(_absolute_paths(cfg.replace(data=resolve_data(cfg.data))))
    with distributed.joined(resolve_device(cfg.device).type) as d:
        if d.enabled:
            check_ranks(cfg, d)
        return _train(cfg, resumed, t_start)


def check_ranks(cfg: TrainConfig, d: distributed.Dist) -> None:
    """What a run needs from its torchrun group: 2 images a rank in each global batch, and
    CUDA for --sync-bn."""
    batches = {"batch_size": cfg.batch_size, "unlabeled_batch_size": cfg.unlabeled_batch_size}
    for name, size in batches.items():
        if size < 2 * d.world_size:
            raise RsdmlError(f"--{name.replace('_', '-')} {size} is the global batch, split over "
                             f"{d.world_size} ranks; give at least {2 * d.world_size} (2 per rank)")
    if cfg.sync_bn and resolve_device(cfg.device).type != "cuda":
        raise RsdmlError("--sync-bn needs CUDA GPUs (SyncBatchNorm has no CPU kernels); drop it")


def _train(cfg: TrainConfig, resumed: RunFolder | None, t_start: float) -> dict[str, Any]:
    """Train in ``resumed`` (a new run folder at --out when None), then evaluate the run. One
    path for one process and for a torchrun group (see :func:`_rank0_first`)."""
    with contextlib.ExitStack() as held:  # the run folder's lock, on rank 0
        def first() -> tuple[Session, Trainer]:
            run, split, opened = _claim(cfg, resumed, held)
            return _start(opened, run, split)

        session, trainer = _rank0_first(first, lambda s: make_trainer(s, make_callbacks(s)),
                                        train=True)
        cfg, run, split = session.cfg, session.run, session.split
        main = distributed.current().is_main
        if resumed is not None:
            if distributed.broadcast(run.last.is_file() if main else None):
                trainer.resume_from(run.last)
            elif main:  # stopped before its first checkpoint: replay it from the start
                log.warning("--resume %s: the run stopped before its first checkpoint; training "
                            "it from the start", run.root)
                for stale in (run.metrics, run.train_log, run.best):
                    stale.unlink(missing_ok=True)
            if main:
                run.record_config(cfg, trainer.global_step)
            if trainer.finished:
                log.warning("the run already finished its %d steps (%d epochs); give a larger "
                            "--epochs or --steps with --extend to train on", trainer.global_step,
                            trainer.epoch_done)
        counts = split.counts()
        if not cfg.quiet:
            ranks = distributed.current().world_size
            where = (f"device {session.device}" if ranks == 1
                     else f"{ranks} ranks on {session.device.type}")
            print(f"rsdml: {cfg.method} on {len(split.paths)} images, {split.num_classes} classes "
                  f"({', '.join(f'{k} {v}' for k, v in counts.items())}), {where} "
                  f"({_precision(trainer)}), run folder {run.root}", file=sys.stderr, flush=True)
        trainer.fit()
        result = evaluate_session(session, checkpoint="auto", trainer=trainer)
        result["wall_seconds"] = round(time.monotonic() - t_start, 1)
        return result


def _rank0_first(first: Callable[[], tuple[Session, Trainer]],
                 follow: Callable[[Session], Trainer], *, train: bool) -> tuple[Session, Trainer]:
    """Rank 0 (the only process without torchrun, where this is just ``first()``) runs
    ``first``: it opens or makes the run folder and builds its session, its files, caches and
    weights, while the other ranks of a torchrun group wait; then they build their session
    from the folder (split.csv) and config rank 0 used, and their trainer with ``follow``."""
    built: tuple[Session, Trainer] | None = None
    with distributed.main_first():
        if distributed.current().is_main:
            built = first()
    # absolute: across machines the ranks' working folders need not be the same
    shared = None if built is None else (str(built[0].run.root.absolute()), built[0].cfg)
    root, cfg = distributed.broadcast(shared)
    if built is not None:
        return built
    cfg = cfg.replace(quiet=True)
    run = RunFolder(Path(root))
    session = build_session(cfg, run, run.read_split(cfg.protocol), train=train)
    return session, follow(session)


def _claim(cfg: TrainConfig, resumed: RunFolder | None,
           held: contextlib.ExitStack) -> tuple[RunFolder, Split, TrainConfig]:
    """Rank 0's run folder, locked until ``held`` closes: ``resumed`` (its split, its images
    found) or a new one at --out (its split made first, so a bad data set leaves no folder)."""
    if resumed is not None:
        resumed.check_writable()
        held.enter_context(resumed.lock())
        split, cfg = _open_run_split(resumed, cfg, "--resume")
        run = resumed
    else:
        if not cfg.data:
            raise RsdmlError("no data folder given: add --data DIR (one sub-folder per class)")
        split = build_split(cfg)
        cfg = split_defaults(cfg, split, announce=True)
        run = RunFolder.create(cfg.out)
        held.enter_context(run.lock())
    if distributed.current().enabled:  # what rank 0 prints and writes, as the others see it
        run = dataclasses.replace(run, root=run.root.absolute())
    return run, split, cfg


def _start(cfg: TrainConfig, run: RunFolder, split: Split) -> tuple[Session, Trainer]:
    """Rank 0's (or the single process's) session and trainer; a new run (``run.created`` set)
    writes its files first, and is removed again if its start fails."""
    new = run.created is not None
    try:
        if new:
            run.write_start(cfg, split)
        try:
            session = build_session(cfg, run, split, train=True)
        except UndecodableImagesError as e:
            if not new or cfg.split or cfg.labels or cfg.strict:  # fixed: report them
                raise
            # The fast check before training cannot see damage inside compressed data: skip
            # such images like the other unusable ones and make the split without them.
            log.warning("skipping %d image(s) that cannot be decoded: %s", len(e.paths),
                        ", ".join(f"{p} ({e.details[p]})" for p in e.paths[:5]))
            split = _split_without(split, set(e.paths), cfg)
            run.write_start(cfg, split)
            session = build_session(cfg, run, split, train=True)
        trainer = make_trainer(session, make_callbacks(session))
        check_memory(cfg, session.model, session.device, trainer.autocast_dtype,
                     uses_channels_last(session.device), trainer.method.graph_images())
    except Exception:
        if new:
            run.discard()
        raise
    return session, trainer


def _split_without(split: Split, bad: set[str], cfg: TrainConfig) -> Split:
    """The split made again, by the same rule and seed, without the ``bad`` images (a class
    left with none is dropped, as the scan drops it)."""
    keep = [i for i, p in enumerate(split.paths) if p not in bad]
    labels = split.labels[keep]
    present = sorted(set(labels.tolist()))
    dropped = [split.classes[c] for c in range(split.num_classes) if c not in present]
    if dropped:
        log.warning("dropping %d class folder(s) with no usable image: %s", len(dropped),
                    ", ".join(dropped))
    relabel = np.full(split.num_classes, -1, dtype=np.int64)
    relabel[present] = np.arange(len(present))
    root = split.contract.data_root if split.contract else cfg.data
    out = make_split([split.paths[i] for i in keep], relabel[labels],
                     [split.classes[c] for c in present], protocol=cfg.protocol,
                     labeled_fraction=cfg.labeled_fraction, val_fraction=cfg.val_fraction,
                     test_fraction=cfg.test_fraction, seed=cfg.seed, data_root=root)
    if out.num_classes < 2:
        raise RsdmlError(f"{cfg.data} has fewer than 2 classes with decodable images; metric "
                         "learning needs at least 2: add or re-save images")
    return out


def _precision(trainer: Trainer) -> str:
    """What the run computes in: the user sees it, since ``--amp auto`` depends on the hardware."""
    if trainer.autocast_dtype == torch.bfloat16:
        if trainer.device.type == "cpu" and not cpu_has_native_bf16():
            parts = ["bf16 autocast, emulated: this CPU has no AMX / AVX512-BF16, so bf16 runs "
                     "slower than float32 here (--amp auto for float32)"]
        else:
            parts = ["bf16 autocast" + (" (--amp off for float32)" if trainer.cfg.amp == "auto" else "")]
    elif trainer.device.type == "cpu" and trainer.cfg.amp == "auto" and cpu_has_native_bf16():
        parts = ["float32 (this CPU runs bf16 natively: --amp bf16 is 1.5-1.9x faster)"]
    else:
        parts = ["float32"]
    if getattr(trainer.inputs, "on_device", False):
        parts.append("images in device memory")
    return ", ".join(parts)


def _open_run_split(run: RunFolder, cfg: TrainConfig, what: str) -> tuple[Split, TrainConfig]:
    """A saved run's split, with its images found under ``cfg.data`` (the saved data folder,
    or the one ``--data`` names); a moved data folder is recorded in config.yaml."""
    split = run.read_split(cfg.protocol, what)
    if not cfg.data:
        raise RsdmlError(f"{what} {run.root}: config.yaml names no data folder; pass --data DIR")
    check_images(split, cfg.data, f"{what} {run.root}: split.csv",
                 "if the data set moved, pass --data DIR (the folder that holds it now)")
    data = str(Path(cfg.data).expanduser().absolute())
    if data != cfg.data or data != run.read_config().data:
        cfg = cfg.replace(data=data)
        log.info("%s: recording the data folder %s in config.yaml", run.root, data)
        run.read_config().replace(data=data).save_yaml(run.config)
    return split, cfg


def make_trainer(s: Session, callbacks: Sequence[Callback] = ()) -> Trainer:
    """The Trainer of a session: its method and labelled/unlabelled sets (used by ``train``
    and by the benchmarks); it gets no labels of unlabelled or test images."""
    split, device = s.split, s.device
    lab = split.index("labeled")
    labeled = LabeledSet(_tensor(lab), _tensor(split.labels[lab]))
    unl = split.unlabeled_index()
    method = create_method(s.cfg, split.num_classes, labeled.labels).to(device)
    return Trainer(s.cfg, s.run, s.model, method, s.inputs, labeled,
                   UnlabeledSet(_tensor(unl)) if len(unl) else None, device, callbacks)


def evaluation_sets(split: Split) -> EvalSets:
    """What evaluation compares: the labelled images as reference, the test (and validation)
    images with their labels."""
    lab, test, val = split.index("labeled"), split.index("test"), split.index("val")
    return EvalSets(
        reference=LabeledSet(_tensor(lab), _tensor(split.labels[lab])),
        test=LabeledSet(_tensor(test), _tensor(split.labels[test])),
        val=LabeledSet(_tensor(val), _tensor(split.labels[val])) if len(val) else None,
    )


def make_callbacks(s: Session) -> list[Callback]:
    """What runs around the training loop, in order: under torchrun, evaluation and the
    spectrum on every rank (each embeds a slice), the writers of files and lines on rank 0."""
    main = distributed.is_main()
    evaluation: list[Callback] = [Evaluation(evaluation_sets(s.split), s.cfg),
                                  Spectrum(s.run, write=main)]
    if not main:
        return evaluation
    console: list[Callback] = [] if s.cfg.quiet else [Console()]
    return [TrainLog(s.run), *evaluation, MetricsLog(s.run), TensorBoard(s.run), *console,
            Checkpoints(s.run, s.cfg)]


def evaluate_session(s: Session, checkpoint: str = "auto", trainer: Trainer | None = None) -> dict[str, Any]:
    """Embed every image with the chosen checkpoint; write eval/, the report and final_metrics."""
    from rsdml.evaluation.report import write_report
    from rsdml.evaluation.suite import headline_metrics, write_evaluation

    if trainer is None:
        trainer = make_trainer(s)
    path = s.run.existing_checkpoint(checkpoint)
    state = load_checkpoint(path, map_location=s.device)
    s.model.load_state_dict(state["model"])
    which = checkpoint if checkpoint in ("last", "best") else (
        "best" if path == s.run.best else "last" if path == s.run.last else str(path))
    emb = trainer.embed(torch.arange(len(s.split.paths)))  # sharded over the ranks, gathered
    if not distributed.is_main():  # rank 0 writes the evaluation; the others return its numbers
        return distributed.broadcast(None)  # type: ignore[no-any-return]
    metrics = write_evaluation(s.run.eval, emb, s.split.labels, s.split.roles, s.split.paths,
                               s.split.classes, seed=s.cfg.seed, extra=copy_metrics(s, emb))
    pos = position_of(state)  # the one training position (epoch, step, whole or not)
    final = {"checkpoint": which, "epoch": pos["epoch"], "step": pos["step"],
             **({"epoch_is_whole": pos["epoch_is_whole"]} if "epoch_is_whole" in pos else {}),
             **headline_metrics(metrics)}
    write_json(s.run.final_metrics, final)
    try:
        if s.cfg.report:
            write_report(s.run.root, seed=s.cfg.seed)
    except Exception as e:  # the numbers are written; a plotting failure must not hide them
        log.warning("could not write the HTML report (%s: %s)", type(e).__name__, e)
    return distributed.broadcast(final)  # type: ignore[no-any-return]


@torch.inference_mode()
def copy_metrics(s: Session, emb: np.ndarray) -> dict[str, Any]:
    """The within-class retrieval measure (``rsdml.evaluation.copies``): altered copies of a
    seeded sample of the test images, embedded by the whole network, search the test images."""
    from rsdml.evaluation.copies import altered_copy, copy_detection, copy_queries

    test = np.flatnonzero(s.split.roles == "test")
    if s.cache is None or s.normalizer is None or len(test) < 2:
        return {}
    queries = copy_queries(len(test), s.cfg.seed)
    s.model.eval()
    layout = torch.channels_last if uses_channels_last(s.device) else torch.contiguous_format
    bs = s.cfg.eval_batch_size
    cache, normalizer = s.cache, s.normalizer

    def trunk(rows: np.ndarray) -> torch.Tensor:
        out = []
        for chunk in torch.as_tensor(rows).split(bs):
            x = normalizer(altered_copy(cache.batch(chunk)).to(s.device))
            out.append(s.model.forward_features(x.contiguous(memory_format=layout)).float().cpu())
        return torch.cat(out)

    rows = test[queries]
    if s.feature_key is not None:  # a frozen trunk: each image's copy is computed once
        from rsdml.training.frozen import cache_folder, copy_features

        feats = copy_features(s.feature_key, cache_folder(s.cfg), rows, trunk)
    else:
        feats = trunk(rows)
    copies = torch.cat([s.model.embed_features(f.to(s.device)).cpu()
                        for f in feats.split(bs)]).numpy()
    return {"copies": {**copy_detection(copies, emb[test], queries), "queries": len(queries)}}


def evaluate_run(run_dir: str | Path, checkpoint: str = "auto", device: str | None = None,
                 quiet: bool = False, data: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a saved run again; ``data`` points at its data set when that moved. Under
    torchrun each rank embeds a slice of the images and rank 0 writes the evaluation."""
    from rsdml.data.datasets import resolve_data

    run = RunFolder.open(run_dir)
    cfg = run.read_config()
    data = resolve_data(str(data)) if data else None
    cfg = cfg.replace(quiet=quiet or cfg.quiet, **({"device": device} if device else {}),
                      **({"data": str(data)} if data else {}))
    with distributed.joined(resolve_device(cfg.device).type), \
            contextlib.ExitStack() as held:  # the run folder's lock, on rank 0
        def first() -> tuple[Session, Trainer]:
            held.enter_context(run.lock())
            split, opened = _open_run_split(run, cfg, "run folder")
            session = build_session(opened, run, split, train=False)
            return session, make_trainer(session)

        session, trainer = _rank0_first(first, make_trainer, train=False)
        return evaluate_session(session, checkpoint, trainer)

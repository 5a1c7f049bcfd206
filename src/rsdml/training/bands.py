"""A run's N-band input: its :class:`~rsdml.data.bands.InputSpec` made once from the training
images and kept in ``RUN/bands.json``, and the augmentation that goes with it.

Why here and not in the runner: training, ``rsdml evaluate``, ``embed`` and ``index`` all need
the same answer to "which bands, which statistics", and only training may create it.
"""

from __future__ import annotations

import numpy as np

from rsdml.config import TrainConfig
from rsdml.data.augment import TrainAugment
from rsdml.data.band_augment import BandAugment
from rsdml.data.bands import BandNormalize, Bands, InputSpec
from rsdml.data.cache import ImageCache
from rsdml.data.preprocess import Preprocess
from rsdml.data.split import Split
from rsdml.errors import RsdmlError
from rsdml.training.run_folder import RunFolder


def training_index(split: Split) -> np.ndarray:
    """The images training sees (labelled and the unlabelled pool; under the transductive
    protocol that pool is the test images, without labels): the band statistics come from
    these only, never from validation or inductive test images."""
    return np.union1d(split.index("labeled"), split.unlabeled_index())


def run_input_spec(cfg: TrainConfig, run: RunFolder, split: Split | None, cache: ImageCache | None,
                   *, create: bool) -> InputSpec | None:
    """The run's N-band input (None for ``--bands rgb``): read from ``bands.json``, or with
    ``create`` computed from ``cache`` and the training images of ``split`` and saved."""
    bands = Bands.parse(cfg.bands, cfg.rgb_bands)
    if bands is None:
        return None
    if run.bands.is_file():
        spec = InputSpec.load(run.bands)
    elif create and cache is not None and split is not None:
        spec = InputSpec.from_images(bands, cache.channels, cache.images, training_index(split))
        spec.save(run.bands)
        return spec
    else:
        raise RsdmlError(f"{run.bands} is missing: the run was trained with --bands {cfg.bands} "
                         "and this file records its band statistics; restore it or train again")
    if cache is not None:
        dtype = str(cache.images.dtype).removeprefix("torch.")
        if (cache.channels, dtype) != (spec.channels, spec.dtype):
            raise RsdmlError(
                f"the images have {cache.channels} band(s) of {dtype}, but the run was trained "
                f"on {spec.channels} of {spec.dtype} ({run.bands}); use the data it was "
                "trained on")
    return spec


def run_preprocess(cfg: TrainConfig, run: RunFolder, split: Split | None, cache: ImageCache | None,
                   *, create: bool) -> Preprocess:
    """The run's :class:`~rsdml.data.preprocess.Preprocess`: with ``create`` (training) made
    from the config and the band statistics and saved as ``preprocess.json``; otherwise read
    from there (a run trained before that file existed: made from config.yaml and bands.json).
    """
    spec = run_input_spec(cfg, run, split, cache, create=create)
    made = Preprocess(int(cfg.image_size), spec)
    if create:
        if not run.preprocess.is_file() or Preprocess.load(run.preprocess) != made:
            made.save(run.preprocess)
        return made
    if not run.preprocess.is_file():
        return made
    saved = Preprocess.load(run.preprocess)
    if saved != made:
        raise RsdmlError(f"{run.preprocess} does not match the run's config.yaml and bands.json "
                         "(image size or bands differ); restore the run's files or train again")
    return saved


def band_selection(cfg: TrainConfig, spec: InputSpec | None) -> Bands | None:
    """The bands to decode for a run: the saved ones (so 'all' stays what it was)."""
    if spec is None:
        return Bands.parse(cfg.bands, cfg.rgb_bands)
    return Bands(spec.bands)


def train_augment(cfg: TrainConfig, spec: InputSpec | None) -> TrainAugment | BandAugment:
    """The paper's RGB augmentation where the input is 8-bit RGB (grayscale and hue need RGB),
    else flips, rotations and per-band brightness and contrast."""
    if spec is None or spec.normalization == "imagenet":
        return TrainAugment(extra=cfg.extra_augment)
    return BandAugment(BandNormalize(spec.mean, spec.std), extra=cfg.extra_augment)

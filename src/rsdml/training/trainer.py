"""The training loop: one labelled and one unlabelled batch per step, one backward pass.

The Trainer steps (model, method, optimiser, sampler, inputs) and nothing else: evaluation,
logs, TensorBoard, checkpoints and the spectrum are callbacks (``callbacks``) the runner
builds. It holds the labels of the labelled images only; the unlabelled set has no labels and
the test labels live in the evaluation callback.

Every random draw is a function of (seed, what, counter): the labelled order of an epoch, the
unlabelled batch of a global step and the augmentation of a step. A run stopped at any step
and resumed from its checkpoint therefore replays exactly what an uninterrupted run would.

Under ``torchrun`` (``rsdml.training.distributed``) the batches stay global: every rank draws
the same global batches, takes its contiguous slice of each, and the method's loss is computed
on the gathered global batch; rank 0 alone writes files and prints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rsdml.allocator import kept_memory
from rsdml.config import TrainConfig
from rsdml.errors import RsdmlError, TrainingDivergedError
from rsdml.models.embedding import EmbeddingNet
from rsdml.progress import progress
from rsdml.signals import stop_signals_to
from rsdml.training import distributed
from rsdml.training.callbacks import Callback, EpochEnd
from rsdml.training.checkpoint import load_checkpoint, position, save_checkpoint
from rsdml.training.diagnostics import (
    mixed_batch,
)
from rsdml.training.inputs import (
    ActivationInputs,
    FeatureInputs,
    ImageInputs,
    embed_batches,
    to_device,
)
from rsdml.training.methods.base import Method
from rsdml.training.optim import Schedule, make_optimizer
from rsdml.training.run_folder import RunFolder
from rsdml.training.sets import LabeledSet, UnlabeledSet
from rsdml.training.teacher import EmaTeacher

log = logging.getLogger(__name__)


class TrainingInterrupted(RsdmlError):
    """SIGINT/SIGTERM: a checkpoint was saved; the run can be resumed."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def derived_seed(seed: int, *key: int) -> int:
    """A well-mixed 63-bit seed for one stream of random draws."""
    return int(np.random.SeedSequence([seed, *key]).generate_state(2, np.uint64)[0] >> np.uint64(1))


STREAM_EPOCH, STREAM_UNLABELED, STREAM_AUGMENT, STREAM_SPECTRUM = 1, 2, 3, 4


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        run: RunFolder,
        model: EmbeddingNet,
        method: Method,
        inputs: ImageInputs | FeatureInputs | ActivationInputs,
        labeled: LabeledSet,
        unlabeled: UnlabeledSet | None,
        device: torch.device,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.cfg, self.run, self.model, self.method = cfg, run, model, method
        self.inputs, self.labeled, self.unlabeled = inputs, labeled, unlabeled
        self.device = device
        #: Evaluation, logs, checkpoints...: built by the runner (rank 0's file writers only
        #: on rank 0), called in this order at each epoch's end.
        self.callbacks = list(callbacks)
        self.dist = distributed.current()
        self.optimizer = make_optimizer(model, method, cfg)
        self.forward_model = torch.compile(model) if cfg.compile else model
        #: The EMA teacher that embeds the weak view (consistency methods, --teacher-ema).
        self.teacher = EmaTeacher(model, method.teacher_momentum) if method.teacher_momentum else None
        self.autocast_dtype = autocast_dtype(cfg.amp, device)
        # The budget: steps per epoch (--epoch-unit), total steps (--steps or --epochs).
        self.labeled_cycle = len(self.labeled_batches(0))
        self.steps_per_epoch = steps_per_epoch(cfg, self.labeled_cycle, unlabeled)
        self.schedule = Schedule.of(cfg, self.steps_per_epoch)
        self.total_steps = self.schedule.total
        self.num_epochs = -(-self.total_steps // self.steps_per_epoch)
        # Position in training: the next step to run (the epoch follows from it).
        self.global_step = 0
        self.sums: dict[str, float] = {}
        self.steps_in_sums = 0
        self.elapsed = 0.0
        self._stop_signal: int | None = None
        self._unl_perm_cache: tuple[int, Tensor] | None = None
        self._lab_cache: tuple[int, list[Tensor]] | None = None
        self._pending: list[tuple[int, int, dict[str, Tensor]]] = []
        self._trunk_trains: bool | None = None
        #: Under torchrun: the DistributedDataParallel training forward (built at the first
        #: step and again when the trunk starts training: DDP syncs the parameters that
        #: require gradients when it is built).
        self._ddp: Any = None
        if method.uses_unlabeled and (unlabeled is None or len(unlabeled.index) == 0):
            raise RsdmlError(f"--method {cfg.method} needs unlabelled images but the split has none")

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        callbacks: dict[str, Any] = {}
        for cb in self.callbacks:
            callbacks.update(cb.state_dict())
        return {
            **callbacks,
            "model": self.model.state_dict(),
            **({"teacher": self.teacher.state_dict()} if self.teacher is not None else {}),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "position": self.position,
            "sums": dict(self.sums),
            "steps_in_sums": self.steps_in_sums,
            "elapsed": self.elapsed,
            "rng_torch": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.teacher is not None:
            if "teacher" not in state:
                raise RsdmlError("the checkpoint has no EMA teacher but this run has "
                                 "--teacher-ema; resume with the run's own config.yaml")
            self.teacher.load_state_dict(state["teacher"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.global_step = int(state["global_step"])
        saved_spe = int(state.get("steps_per_epoch", self.steps_per_epoch))
        if saved_spe != self.steps_per_epoch or int(state["epoch"]) != self.epoch:
            raise RsdmlError(
                f"the checkpoint was written with {saved_spe} steps an epoch, this run has "
                f"{self.steps_per_epoch} (batch sizes, --epoch-unit or the split differ); resume "
                "with the run's own config.yaml")
        self.sums = dict(state["sums"])
        self.steps_in_sums = int(state["steps_in_sums"])
        self.elapsed = float(state["elapsed"])
        torch.set_rng_state(state["rng_torch"])
        for cb in self.callbacks:
            cb.load_state_dict(state)

    def save(self, extra: dict[str, Any] | None = None) -> None:
        save_checkpoint({**self.state_dict(), **(extra or {})}, self.run.last)

    def _group_lr(self, name: str) -> float:
        return next(g["lr"] for g in self.optimizer.param_groups if g["name"] == name)

    def head_lr(self) -> float:
        return self._group_lr("head")

    def trunk_lr(self) -> float:
        return self._group_lr("trunk")

    def resume_from(self, path: Any) -> None:
        self.load_state_dict(load_checkpoint(path, map_location=self.device))
        for cb in self.callbacks:
            cb.on_resume(self)

    # ------------------------------------------------------------------ sampling
    @property
    def epoch(self) -> int:
        """Whole epochs done (the epoch the next step belongs to)."""
        return self.global_step // self.steps_per_epoch

    @property
    def batch_in_epoch(self) -> int:
        return self.global_step % self.steps_per_epoch

    def labeled_batches(self, cycle: int) -> list[Tensor]:
        """One pass over the labelled set (``cycle``: which pass): the labelled stream cycles
        on its own, like the unlabelled one, so an epoch may hold several passes."""
        gen = torch.Generator().manual_seed(derived_seed(self.cfg.seed, STREAM_EPOCH, cycle))
        batches = self.method.labeled_batches(self.labeled.labels.cpu(), self.cfg.batch_size, gen)
        # BatchNorm cannot train on one image: each rank's slice needs two.
        if len(batches) > 1 and len(batches[-1]) < 2 * self.dist.world_size:
            batches[-2:] = [torch.cat(batches[-2:])]
        return batches

    def labeled_batch(self, step: int) -> Tensor:
        """The labelled batch of a global step (with ``--epoch-unit labeled`` pass k of the
        labelled set is epoch k, as before the budget was in steps)."""
        cycle, b = divmod(step, self.labeled_cycle)
        if self._lab_cache is None or self._lab_cache[0] != cycle:
            self._lab_cache = (cycle, self.labeled_batches(cycle))
        return self._lab_cache[1][b]

    def _unl_perm(self, cycle: int) -> Tensor:
        if self._unl_perm_cache is None or self._unl_perm_cache[0] != cycle:
            gen = torch.Generator().manual_seed(derived_seed(self.cfg.seed, STREAM_UNLABELED, cycle))
            assert self.unlabeled is not None
            self._unl_perm_cache = (cycle, torch.randperm(len(self.unlabeled.index), generator=gen))
        return self._unl_perm_cache[1]

    def unlabeled_batch(self, step: int) -> Tensor:
        """The unlabelled batch of a global step: the unlabelled stream cycles on its own."""
        assert self.unlabeled is not None
        n, size = len(self.unlabeled.index), self.cfg.unlabeled_batch_size
        start, parts, need = step * size, [], size
        while need > 0:
            cycle, offset = divmod(start, n)
            take = self._unl_perm(cycle)[offset : offset + need]
            parts.append(take)
            need -= len(take)
            start += len(take)
        return self.unlabeled.index[torch.cat(parts)]

    # ------------------------------------------------------------------ one step
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def set_position(self, step: int) -> None:
        """Rates, the unlabelled terms' weight and what trains at step ``step`` (``Schedule``)."""
        self.schedule.set_learning_rates(self.optimizer, step)
        self.method.set_ramp(self.schedule.unlabeled_ramp(step))
        trains = self.schedule.trunk_trains(step)
        if trains != self._trunk_trains and self.schedule.trunk:
            for p in self.trunk_parameters():
                p.requires_grad_(trains)  # no backward through a trunk that does not learn
            self._trunk_trains = trains
            self._ddp = None
        if self.dist.enabled and self._ddp is None:
            self._ddp = self._wrap_ddp()

    def trunk_parameters(self) -> list[torch.nn.Parameter]:
        """The trunk's parameters that train: all of them, or under ``--train-stages`` those
        of the stages above the cached activations."""
        cut = getattr(self.inputs, "cut", None)
        return cut.upper_parameters() if cut is not None else list(self.model.trunk.parameters())

    def _wrap_ddp(self) -> Any:
        """The training forward under DistributedDataParallel (its gradients averaged over
        the ranks); torch.compile'd around DDP when ``--compile``."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(_Embedder(self.model, self.inputs.embed), device_ids=ids)
        return torch.compile(ddp) if self.cfg.compile else ddp

    def _train_forward(self, x: Tensor) -> Tensor:
        if self._ddp is not None:
            return self._ddp(x)  # type: ignore[no-any-return]
        return self.inputs.embed(self.forward_model, x)

    def _train_mode(self) -> None:
        self.model.train()
        if not self._trunk_trains:  # head warm-up: the trunk gives its evaluation features
            self.model.trunk.eval()
        elif self.cfg.bn_frozen:
            for m in self.model.trunk.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def train_step(self, batch: Tensor, step: int | None = None) -> dict[str, Tensor]:
        """One optimiser step on labelled ``batch`` (+ this step's unlabelled batch) with the
        rates of step ``step`` (default: the first step at which every group trains at its
        peak rate; the last step would be near rate 0 under the cosine schedule).
        Returns the loss terms as detached device tensors: reading them is left to
        ``run_step`` / ``flush_losses``, so a GPU never idles while the host waits for a loss
        value."""
        self.set_position(math.ceil(self.schedule.peak) if step is None else step)
        d = self.dist
        gen = torch.Generator(device=self.device.type if self.device.type == "cuda" else "cpu")
        key = (self.global_step,) if d.world_size == 1 else (self.global_step, d.rank)
        gen.manual_seed(derived_seed(self.cfg.seed, STREAM_AUGMENT, *key))
        index_l = batch  # the global batch; this rank runs the network on its slice of it
        images = self.labeled.index[distributed.shard(index_l, d)]
        n_l = len(images)
        views = self.method.uses_views
        x_weak = None
        index_u = None  # the whole unlabelled batch (view methods look propagated classes up by it)
        if views:  # the labelled images' augmentation, then the weak and strong unlabelled views
            index_u = self.unlabeled_batch(self.global_step)
            x_weak, x_strong = self.inputs.views(distributed.shard(index_u, d), gen)
            x = torch.cat([self.inputs.train(images, gen), x_strong])
            if self.method.weak_needs_grad:
                x, x_weak = torch.cat([x, x_weak]), None
        elif self.method.uses_unlabeled:  # one gather and one augmentation call for both
            images = torch.cat([images, distributed.shard(self.unlabeled_batch(self.global_step), d)])
            x = self.inputs.train(images, gen)
        else:
            x = self.inputs.train(images, gen)
        y_l = to_device(self.labeled.labels[index_l], self.device)
        self._train_mode()
        with self.autocast():
            emb_w = None
            if x_weak is not None:  # pseudo-label targets only: no graph, a third of the cost
                net = self.forward_model if self.teacher is None else self.teacher.network
                with torch.no_grad():
                    emb_w = self.inputs.embed(net, x_weak).float()
            emb = self._train_forward(x).float()
            terms = global_terms(self.method, emb, n_l, y_l, to_device(index_l, self.device),
                                 self.cfg.unlabeled_batch_size, emb_w, index_u)
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        distributed.average_gradients(self.method.parameters())
        self.optimizer.step()
        if self.teacher is not None:
            self.teacher.update(self.model)
            self.method.update_teacher()
        return {k: v.detach() for k, v in terms.items()}

    def run_step(self, batch: Tensor, epoch: int, step: int | None = None) -> None:
        """``train_step`` plus the bookkeeping of the training loop: the step counter, and the
        loss terms read back (and checked) every step on a CPU, every ``_FLUSH_EVERY["cuda"]``
        steps on a GPU."""
        self._pending.append((self.global_step, epoch, self.train_step(batch, step)))
        self.global_step += 1
        if len(self._pending) >= _FLUSH_EVERY.get(self.device.type, 1):
            self.flush_losses()

    def flush_losses(self) -> None:
        """Read the pending steps' loss terms back in one copy, stop on the first non-finite
        one, and add them to the epoch's sums. Called before anything is saved, so a
        checkpoint never holds weights from after a diverged step."""
        if not self._pending:
            return
        flat = torch.cat([torch.stack(list(t.values())).float().reshape(-1)
                          for _, _, t in self._pending]).cpu().tolist()
        pending, self._pending, at = self._pending, [], 0
        for step, epoch, terms in pending:
            values = dict(zip(terms, flat[at:at + len(terms)]))
            at += len(terms)
            bad = sorted((k for k, v in values.items() if not math.isfinite(v)),
                         key=lambda k: k == "total")
            if bad:  # name the term that broke, not the sum it broke
                kept = (f"the last good checkpoint is kept ({self.run.last})"
                        if self.run.last.is_file() else "no checkpoint had been written yet")
                raise TrainingDivergedError(
                    f"loss term {bad[0]!r} became {values[bad[0]]} at epoch {epoch + 1}, step "
                    f"{step}; training stopped and {kept}; lower --lr or the loss weights and "
                    "train again"
                )
            for k, v in values.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
            self.steps_in_sums += 1

    # ------------------------------------------------------------------ evaluation
    def embed(self, index: Tensor) -> np.ndarray:
        """Evaluation-mode embeddings of ``index``; under torchrun each rank embeds its slice
        and every rank receives all of them, in order."""
        self.model.eval()
        out = embed_batches(lambda x: self.inputs.embed(self.forward_model, x), self.inputs,
                            distributed.shard(index, self.dist), self.cfg.eval_batch_size,
                            self.autocast_dtype, not self.cfg.quiet, self.cfg.embedding_dim)
        if self.dist.world_size == 1:
            return out
        return distributed.gather_cat(torch.from_numpy(out).to(self.device),
                                      total=len(index)).cpu().numpy()

    @torch.inference_mode()
    def spectrum(self) -> list[float] | None:
        """Singular values of P on a fixed unlabelled batch: the rank the method maximises."""
        if self.unlabeled is None or len(self.unlabeled.index) == 0:
            return None
        index = mixed_batch(self.unlabeled.index, self.cfg.unlabeled_batch_size,
                            derived_seed(self.cfg.seed, STREAM_SPECTRUM))
        emb = torch.from_numpy(self.embed(index)).to(self.device)
        probs = self.method.predict_proba(emb)
        if probs is None:
            return None
        return torch.linalg.svdvals(probs.float()).cpu().tolist()

    def propagate(self) -> None:
        """Label propagation over every training image (``rsdml.training.propagation``): at
        the first step over the frozen trunk's features in fast mode (the head is still
        random), later over the current embeddings."""
        from rsdml.training.propagation import propagate

        assert self.unlabeled is not None
        pool = torch.cat([self.labeled.index, self.unlabeled.index])
        if self.global_step == 0 and isinstance(self.inputs, FeatureInputs):
            vectors = torch.cat([self.inputs.eval(c).cpu() for c in pool.split(4096)]).numpy()
        else:
            vectors = self.embed(pool)
        n_l = len(self.labeled.index)
        prop = propagate(vectors, np.arange(n_l), self.labeled.labels.cpu().numpy(),
                         self.method.num_classes)
        self.method.set_propagated(pool, torch.from_numpy(prop.labels),
                                   torch.from_numpy(prop.term_weight))

    # ------------------------------------------------------------------ the loop
    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                if self.dist.enabled:  # torchrun passes on the signal its group got: the same
                    return            # stop (torchrun kills what has not stopped in time)
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            self._stop_signal = signum
            if self.dist.is_main:
                print(f"\nrsdml: got {signal.Signals(signum).name}; saving a checkpoint after this "
                      "step...", file=sys.stderr, flush=True)

        with stop_signals_to(handler):
            yield

    def fit(self) -> None:
        """Train to ``--epochs``, the callbacks called before the first step (on a new run)
        and after each epoch."""
        if self.global_step == 0 and self.method.needs_start_embeddings:
            emb = torch.from_numpy(self.embed(self.labeled.index)).to(self.device)
            self.method.on_train_start(emb)
        try:
            if self.global_step == 0:  # the starting point, so every curve shows what training added
                self._epoch_end(EpochEnd({"epoch": 0, "step": 0}, start=True))
            with self._signals():
                while self.global_step < self.total_steps:
                    self._run_epoch()
                    stop = self._stop_requested()
                    if stop is not None and self.global_step < self.total_steps:
                        for cb in self.callbacks:
                            cb.on_interrupt(self)
                        distributed.barrier()
                        raise TrainingInterrupted(
                            f"interrupted after epoch {self.epoch_done} at step "
                            f"{self.global_step}; checkpoint saved to {self.run.last}; continue "
                            f"with `rsdml train --resume {self.run.root}`", stop)
            for cb in self.callbacks:
                cb.on_train_end(self)
        finally:
            for cb in self.callbacks:
                cb.close()
        distributed.barrier()  # every checkpoint is on disk before any rank reads one back

    def _epoch_end(self, end: EpochEnd) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(self, end)

    def _stop_requested(self) -> int | None:
        """The signal that stops training; under torchrun all ranks agree on it, step by step
        (a signal may reach the ranks at different steps)."""
        if not self.dist.enabled:
            return self._stop_signal
        return distributed.agree_max(self._stop_signal or 0) or None

    def _run_epoch(self) -> None:
        epoch = self.epoch
        at_start = self.global_step % self.steps_per_epoch == 0
        if self.method.needs_propagation and (
                (at_start and epoch % self.method.propagation_every == 0)
                or not self.method.has_propagated):
            self.propagate()
        end = min((epoch + 1) * self.steps_per_epoch, self.total_steps)
        t0 = time.monotonic()
        todo = range(self.global_step, end)
        with kept_memory():
            self._steps(todo, epoch, end, t0)
        self.flush_losses()
        self.elapsed += time.monotonic() - t0
        means = {f"loss_{k}": v / max(1, self.steps_in_sums) for k, v in self.sums.items()
                 if k not in self.method.stat_terms}
        stats = {k: v / max(1, self.steps_in_sums) for k, v in self.sums.items()
                 if k in self.method.stat_terms}
        row: dict[str, Any] = {"epoch": self.epoch_done, "step": self.global_step, **means,
                               **stats, **self.method.epoch_stats(),
                               "lr": self.head_lr(), "trunk_lr": self.trunk_lr(),
                               "reg_weight": self.method.reg_weight,
                               "seconds": round(self.elapsed, 3)}
        self.sums, self.steps_in_sums = {}, 0
        self._epoch_end(EpochEnd(row, means))

    def _steps(self, todo: range, epoch: int, end: int, t0: float) -> None:
        """The steps ``todo`` of epoch ``epoch`` (a signal stops them after a step, saved)."""
        for s in progress(todo, total=len(todo), desc=f"epoch {epoch + 1}/{self.num_epochs}",
                          enabled=not self.cfg.quiet):
            self.run_step(self.labeled_batch(s), epoch, s)
            # At an epoch's last step the epoch ends first (logs, evaluation, checkpoint): the
            # position is the step, so a checkpoint there must not skip the epoch's end.
            stop = self._stop_requested() if s + 1 < end else None
            if stop is not None:
                self.flush_losses()
                self.elapsed += time.monotonic() - t0
                for cb in self.callbacks:  # rank 0's saves the checkpoint
                    cb.on_interrupt(self)
                distributed.barrier()  # no rank exits (torchrun then stops the rest) before the save
                raise TrainingInterrupted(
                    f"interrupted in epoch {epoch + 1} at step {self.global_step}; checkpoint saved "
                    f"to {self.run.last}; continue with `rsdml train --resume {self.run.root}`",
                    stop,
                )

    @property
    def epoch_done(self) -> int:
        """Epochs begun and ended (a partial last epoch under ``--steps`` counts as one)."""
        return -(-self.global_step // self.steps_per_epoch)

    @property
    def finished(self) -> bool:
        return self.global_step >= self.total_steps

    @property
    def position(self) -> dict[str, Any]:
        """Where training is (``checkpoint.position``): saved in every checkpoint."""
        return position(self.global_step, self.steps_per_epoch)


def steps_per_epoch(cfg: TrainConfig, labeled_batches: int, unlabeled: UnlabeledSet | None) -> int:
    """Optimiser steps in one epoch: with ``--epoch-unit pool`` enough for one pass over the
    unlabelled pool (at least one over the labelled set), whatever the method, so methods
    compared on one split get the same budget; with ``labeled`` one pass over the labelled set."""
    if cfg.epoch_unit == "labeled" or unlabeled is None or len(unlabeled.index) == 0:
        return labeled_batches
    return max(labeled_batches, -(-len(unlabeled.index) // cfg.unlabeled_batch_size))


def global_terms(method: Method, emb: Tensor, n_local: int, labels: Tensor, index: Tensor,
                 n_unlabeled: int, emb_weak: Tensor | None = None,
                 index_u: Tensor | None = None) -> dict[str, Tensor]:
    """The method's loss terms on the global batch. ``emb``: this rank's embeddings, its slice
    of the labelled batch (``n_local`` rows) then its slice of the unlabelled one; ``labels``
    and ``index``: the whole labelled batch's; ``n_unlabeled``: the global unlabelled batch's
    size. Every rank gathers all slices (with autograd) and computes the same loss one
    process would on the concatenated batch; DDP's gradient average then gives that
    process's gradient (``distributed``'s docstring says why). ``index_u``: the whole
    unlabelled batch's images (view methods only: the propagated labels are looked up by it)."""
    emb_l = distributed.gather_cat(emb[:n_local], total=len(labels))
    if not method.uses_unlabeled:
        return method(emb_l, labels, index)  # type: ignore[no-any-return]
    if not method.uses_views:
        emb_u = distributed.gather_cat(emb[n_local:], total=n_unlabeled)
        return method(emb_l, labels, index, emb_u)  # type: ignore[no-any-return]
    # Views: the strong view follows the labelled rows, then (when the weak view has a graph)
    # the weak one; else the weak view's embeddings come apart, without a graph.
    n_u = (len(emb) - n_local) if emb_weak is not None else (len(emb) - n_local) // 2
    emb_s = distributed.gather_cat(emb[n_local:n_local + n_u], total=n_unlabeled)
    local_w = emb_weak if emb_weak is not None else emb[n_local + n_u:]
    emb_w = distributed.gather_cat(local_w, total=n_unlabeled)
    return method(emb_l, labels, index, emb_s, emb_w, index_u)  # type: ignore[no-any-return]


class _Embedder(torch.nn.Module):
    """The network as the inputs embed with it (``model(x)`` or, in fast mode, the head on
    cached features): the one module DDP wraps, so its forward is what DDP sees."""

    def __init__(self, model: EmbeddingNet, embed: Any) -> None:
        super().__init__()
        self.model = model
        self._embed = embed

    def forward(self, x: Tensor) -> Tensor:
        return self._embed(self.model, x)  # type: ignore[no-any-return]


# Steps between loss read-backs: on a GPU each read-back makes the host wait for the device.
_FLUSH_EVERY = {"cpu": 1, "cuda": 20}


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA GPUs with bf16 (``auto``); float32 on a CPU unless ``bf16`` is
    asked for: on CPUs with AMX / AVX512-BF16 it makes steps 1.5-1.9x faster but cost 0.6 kNN
    points in a measured fine-tuning comparison (docs/results.md). The losses always run in
    float32. ``off`` forces float32, ``bf16`` forces bf16."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def cpu_has_native_bf16() -> bool:
    """AMX tiles or AVX512-BF16 instructions, which oneDNN uses for bf16 convolutions (without
    them bf16 is emulated and slower than float32)."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()))
    except (AttributeError, RuntimeError):
        return False

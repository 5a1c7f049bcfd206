"""What happens around the training loop, as callbacks the runner builds and hands to the Trainer.

The Trainer only steps (model, method, optimiser, sampler, inputs); at the start, at the end of
each epoch, on an interrupt and at the end it calls these. Evaluation is the one callback that
holds labels of test images (:class:`EvalSets`), so the training step can never see them. Under
``torchrun`` the runner builds the file-writing callbacks (logs, TensorBoard, console,
checkpoints) on rank 0 only; evaluation and the spectrum run on every rank, since each rank
embeds its slice of the images (``Trainer.embed`` gathers them).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from torch import Tensor

from rsdml.config import TrainConfig
from rsdml.evaluation.knn import knn_accuracy
from rsdml.fsutil import read_jsonl, write_json, write_text_atomic
from rsdml.training.checkpoint import save_checkpoint
from rsdml.training.diagnostics import (
    collapse_warning,
    embedding_diagnostics,
    is_collapsed,
    prediction_diagnostics,
)
from rsdml.training.run_folder import RunFolder
from rsdml.training.sets import LabeledSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSets:
    """What evaluation compares; test labels live here, out of the training step's reach."""

    reference: LabeledSet
    test: LabeledSet
    val: LabeledSet | None = None


@dataclass
class EpochEnd:
    """One epoch's end as the callbacks see it (``start``: before the first step). ``row`` is
    the line the logs write; evaluation adds its metrics to it."""

    row: dict[str, Any]
    means: dict[str, float] = field(default_factory=dict)
    start: bool = False
    evaluated: bool = False
    improved: bool = False


class Trainer(Protocol):
    """What a callback may see of the training loop: its position, the model and method to
    save, embedding and the spectrum. :class:`rsdml.training.trainer.Trainer` is one; the
    callbacks never import it (no import circle) and tests can hand them a stand-in."""

    cfg: TrainConfig
    epoch: int
    global_step: int
    position: dict[str, Any]  # rsdml.training.checkpoint.position: step, epoch, whole or not
    finished: bool
    elapsed: float  # seconds of training so far (evaluation adds its own time)
    dist: Any  # rsdml.training.distributed.Dist: is_main
    model: Any
    method: Any

    def embed(self, index: Tensor) -> np.ndarray: ...

    def spectrum(self) -> list[float] | None: ...

    def save(self) -> None: ...


class Callback:
    """Hooks of the training loop; each does nothing unless overridden."""

    def on_epoch_end(self, trainer: Trainer, end: EpochEnd) -> None:
        """After each epoch, and once before training (``end.start``)."""

    def on_interrupt(self, trainer: Trainer) -> None:
        """SIGINT/SIGTERM: after the step all ranks stopped at."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch (not after an interrupt or an error)."""

    def on_resume(self, trainer: Trainer) -> None:
        """After the trainer loaded a checkpoint."""

    def close(self) -> None:
        """Always, when the loop ends (release files)."""

    def state_dict(self) -> dict[str, Any]:
        """Entries for the checkpoint (top-level keys)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Evaluation(Callback):
    """kNN accuracy (and on validation) every ``--eval-every`` epochs, before training and at
    the end, plus the label-free collapse diagnostics; tracks the best validation accuracy."""

    def __init__(self, sets: EvalSets, cfg: TrainConfig) -> None:
        self.sets, self.every = sets, cfg.eval_every
        self.best_val: float | None = None

    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        """kNN accuracy (and on validation), plus the label-free collapse diagnostics of the
        test embeddings and of the unlabelled prediction matrix; warns when they collapse."""
        ev = self.sets
        ref = trainer.embed(ev.reference.index)
        ref_y = ev.reference.labels.numpy()
        test = trainer.embed(ev.test.index)
        test_y = ev.test.labels.numpy()
        # --labels: the test images have no labels (-1); only the diagnostics can be computed
        out = {"knn_acc": knn_accuracy(ref, ref_y, test, test_y, k=10)} \
            if len(test_y) and test_y.min() >= 0 else {}
        if ev.val is not None and len(ev.val.index):
            out["val_knn_acc"] = knn_accuracy(ref, ref_y, trainer.embed(ev.val.index),
                                              ev.val.labels.numpy(), k=10)
        out.update(pseudo_label_quality(trainer.method, test, ev.test.labels.numpy()))
        diag = embedding_diagnostics(test)
        spectrum = trainer.spectrum()
        if spectrum is not None:
            diag.update(prediction_diagnostics(spectrum))
        if trainer.epoch_done > 0 and is_collapsed(diag) and trainer.dist.is_main:
            log.warning(collapse_warning(diag, trainer.epoch_done))
        return {**out, **diag}

    def on_epoch_end(self, trainer: Trainer, end: EpochEnd) -> None:
        if not (end.start or trainer.epoch_done % self.every == 0 or trainer.finished):
            return
        t0 = time.monotonic()
        metrics = self.evaluate(trainer)
        trainer.elapsed += time.monotonic() - t0
        end.row.update(metrics, seconds=round(trainer.elapsed, 3))
        end.evaluated = True
        val = metrics.get("val_knn_acc")
        if not end.start and val is not None and (self.best_val is None or val > self.best_val):
            self.best_val, end.improved = val, True

    def state_dict(self) -> dict[str, Any]:
        return {"best_val": self.best_val}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_val = state.get("best_val")


def pseudo_label_quality(method: Any, emb: Any, labels: Any) -> dict[str, float]:
    """How the method's classifier and pseudo-labels fare on the test images (under the
    transductive protocol: the unlabelled pool), in evaluation mode without augmentation:
    ``clf_acc`` (top class), ``pl_mask_rate`` (share the current thresholds accept) and
    ``pl_acc`` (accuracy of the accepted ones). For the report only: nothing here reaches
    training, which never sees these labels. A metric that needs labels is computed on the
    images that have one (label >= 0) and left out when none has (``--labels`` runs): an
    image without a label is never compared with the label -1."""
    import torch

    if len(emb) == 0:
        return {}
    labels = np.asarray(labels)
    known = labels >= 0
    out: dict[str, float] = {}
    with torch.no_grad():
        device = next(iter(method.parameters()), torch.zeros(0)).device
        probs = method.predict_proba(torch.as_tensor(emb, device=device))
        if probs is None:
            return {}
        if known.any():
            top = probs.argmax(1).cpu().numpy()
            out["clf_acc"] = float((top[known] == labels[known]).mean())
        pl = method.pseudo_labels(probs)
    if pl is not None:
        target, accepted = (t.cpu().numpy() for t in pl)
        out["pl_mask_rate"] = float(accepted.mean())
        scored = accepted & known
        if scored.any():
            out["pl_acc"] = float((target[scored] == labels[scored]).mean())
    return out


class Spectrum(Callback):
    """Singular values of the unlabelled prediction matrix at the start and the end
    (``spectrum.json``; computed on every rank, written by ``write``)."""

    def __init__(self, run: RunFolder, write: bool) -> None:
        self.run, self.write = run, write

    def on_epoch_end(self, trainer: Trainer, end: EpochEnd) -> None:
        if end.start:
            start = trainer.spectrum()
            if start is not None and self.write:
                write_json(self.run.spectrum, {"start": start, "start_step": 0})

    def on_train_end(self, trainer: Trainer) -> None:
        end = trainer.spectrum()
        if end is not None and self.write and self.run.spectrum.exists():
            spec = json.loads(self.run.spectrum.read_text())
            spec.update({"end": end, "end_step": trainer.global_step})
            write_json(self.run.spectrum, spec)


class _JsonLog(Callback):
    """A JSON-lines log of the run folder; lines after a resumed checkpoint are dropped (the
    steps they describe will run again)."""

    def __init__(self, path: Any) -> None:
        self.path = path

    def append(self, row: dict[str, Any]) -> None:
        from rsdml.errors import RsdmlError

        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise RsdmlError(
                f"could not write {self.path} ({e.strerror or e}); free disk space or check the "
                "folder's permissions, then continue with `rsdml train --resume` (the last "
                "checkpoint is kept)"
            ) from None

    def on_resume(self, trainer: Trainer) -> None:
        step = trainer.global_step
        # A run that stopped inside an epoch (--steps) logged that epoch at its last step; when
        # training goes on (--extend), the epoch ends again later: its line is written then.
        ends_again = not trainer.position["epoch_is_whole"] and not trainer.finished
        rows = [r for r in read_jsonl(self.path) if r.get("step", 0) < step
                or (r.get("step", 0) == step and not (ends_again and r.get("epoch", 0) > 0))]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))


class TrainLog(_JsonLog):
    """``train_log.jsonl``: one line per epoch, the loss means and rates (before evaluation)."""

    def __init__(self, run: RunFolder) -> None:
        super().__init__(run.train_log)

    def on_epoch_end(self, trainer: Trainer, end: EpochEnd) -> None:
        if not end.start:
            self.append(end.row)


class MetricsLog(_JsonLog):
    """``metrics.jsonl``: one line per evaluation (epoch 0 = before training)."""

    def __init__(self, run: RunFolder) -> None:
        super().__init__(run.metrics)

    def on_epoch_end(self, trainer: Trainer, end: EpochEnd) -> None:
        if end.evaluated:
            self.append(end.row)


class TensorBoard(Callback):
    """``tb/``: the loss means and the evaluation metrics per epoch (opened at the first)."""

    def __init__(self, run: RunFolder) -> None:
        self.run = run
        self.writer: Any = None

    def on_epoch_end(self, trainer: Trainer, end: EpochEnd) -> None:
        if end.start:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run.tensorboard))
        for k, v in end.means.items():
            self.writer.add_scalar(f"train/{k}", v, trainer.global_step)
        for k, v in end.row.items():  # per-epoch statistics of the method (e.g. mask_rate)
            if k not in end.means and k not in _NOT_METRICS and isinstance(v, (int, float)) \
                    and (end.evaluated or k in trainer.method.stat_terms):
                group = "train" if k in trainer.method.stat_terms else "eval"
                self.writer.add_scalar(f"{group}/{k}", v, trainer.global_step)
        hist = end.row.get("pseudo_label_hist")
        if hist and sum(hist):  # which classes the pseudo-labels went to this epoch
            import numpy as np

            self.writer.add_histogram("train/pseudo_label_class", np.repeat(
                np.arange(len(hist)), hist), trainer.global_step, bins=len(hist))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


#: Row entries that are the position or the schedule, not evaluation metrics.
_NOT_METRICS = frozenset({"epoch", "step", "lr", "trunk_lr", "reg_weight", "seconds"})


class Console(Callback):
    """One line per epoch on stderr (what the row holds: an epoch without evaluation has no
    kNN accuracy)."""

    def on_epoch_end(self, trainer: Trainer, end: EpochEnd) -> None:
        row = end.row
        acc = "".join(f"  {k} {row[k]:.4f}" for k in ("knn_acc", "val_knn_acc") if k in row)
        if end.start:
            schedule = getattr(trainer, "schedule", None)
            if schedule is not None:  # each phase in steps, once
                print(f"rsdml: {schedule.describe()}", file=sys.stderr, flush=True)
            print(f"epoch 0 (before training){acc}", file=sys.stderr, flush=True)
            return
        means = end.means
        terms = ", ".join(f"{k[5:]} {v:.4f}" for k, v in means.items() if k != "loss_total")
        mask = f"  mask_rate {row['mask_rate']:.3f}" if "mask_rate" in row else ""
        print(f"epoch {trainer.epoch_done}/{trainer.num_epochs} (step {trainer.global_step})  "
              f"loss {means.get('loss_total', float('nan')):.4f} ({terms}){mask}{acc}  "
              f"{trainer.elapsed:.1f}s", file=sys.stderr, flush=True)


class Checkpoints(Callback):
    """``checkpoints/last.pt`` every ``--checkpoint-every`` epochs, at the end and on an
    interrupt; ``best.pt`` when the validation accuracy improves (atomic writes)."""

    def __init__(self, run: RunFolder, cfg: TrainConfig) -> None:
        self.run, self.every = run, cfg.checkpoint_every

    def on_epoch_end(self, trainer: Trainer, end: EpochEnd) -> None:
        if end.start:
            return
        if end.improved:
            save_checkpoint({"model": trainer.model.state_dict(),
                             "method": trainer.method.state_dict(), "epoch": trainer.epoch_done,
                             "global_step": trainer.global_step, "position": trainer.position,
                             "val_knn_acc": end.row["val_knn_acc"],
                             "config": trainer.cfg.to_dict()}, self.run.best)
        if trainer.epoch_done % self.every == 0 or trainer.finished:
            trainer.save()

    def on_interrupt(self, trainer: Trainer) -> None:
        trainer.save()

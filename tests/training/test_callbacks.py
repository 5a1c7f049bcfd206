"""Callbacks read what they are handed: the row as it is when they are called, and a narrow
view of the loop (a stand-in here, not a Trainer)."""

from __future__ import annotations

from types import SimpleNamespace

from rsdml.training.callbacks import Console, EpochEnd


def test_console_without_an_evaluation_before_it(capsys):
    """Console alone used to raise KeyError 'knn_acc' (it relied on Evaluation running
    first and filling the row)."""
    console = Console()
    loop = SimpleNamespace(epoch=0, epoch_done=0, num_epochs=2, global_step=0, elapsed=0.0)
    console.on_epoch_end(loop, EpochEnd({"epoch": 0, "step": 0}, start=True))
    loop.epoch, loop.epoch_done, loop.global_step, loop.elapsed = 1, 1, 2, 1.5
    console.on_epoch_end(loop, EpochEnd({"epoch": 1}, {"loss_total": 1.0, "loss_nsm": 0.5},
                                        evaluated=True))
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "epoch 0 (before training)"
    assert err[1] == "epoch 1/2 (step 2)  loss 1.0000 (nsm 0.5000)  1.5s"


def test_console_shows_the_metrics_the_row_holds(capsys):
    console = Console()
    loop = SimpleNamespace(epoch=2, epoch_done=2, num_epochs=2, global_step=4, elapsed=3.0)
    console.on_epoch_end(loop, EpochEnd({"knn_acc": 0.5}, start=True))
    console.on_epoch_end(loop, EpochEnd({"knn_acc": 0.75, "val_knn_acc": 0.25},
                                        {"loss_total": 2.0}, evaluated=True))
    err = capsys.readouterr().err.splitlines()
    assert err == ["epoch 0 (before training)  knn_acc 0.5000",
                   "epoch 2/2 (step 4)  loss 2.0000 ()  knn_acc 0.7500  val_knn_acc 0.2500  3.0s"]


class _Method:
    """A stand-in method: fixed class probabilities, pseudo-labels above 0.6."""

    def __init__(self, probs):
        import torch

        self.probs = torch.tensor(probs)

    def parameters(self):
        return iter(())

    def predict_proba(self, emb):
        return self.probs

    def pseudo_labels(self, probs):
        conf, target = probs.max(1)
        return target, conf >= 0.6


def test_pseudo_label_quality_leaves_out_images_without_labels():
    """Issue 25, defect 1: a --labels run's test images have the label -1; clf_acc and
    pl_acc were 0.0 (every prediction compared with -1)."""
    import numpy as np

    from rsdml.training.callbacks import pseudo_label_quality

    method = _Method([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.7, 0.3]])
    emb = np.zeros((4, 2), np.float32)
    out = pseudo_label_quality(method, emb, np.full(4, -1))
    assert out == {"pl_mask_rate": 0.75}  # label-free; no accuracy without labels
    out = pseudo_label_quality(method, emb, np.array([0, 0, -1, -1]))
    assert out["clf_acc"] == 0.5  # of the two labelled images, not of four
    assert out["pl_acc"] == 0.5 and out["pl_mask_rate"] == 0.75

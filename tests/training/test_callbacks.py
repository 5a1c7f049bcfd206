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

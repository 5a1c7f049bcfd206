"""Training under torchrun on CPUs (gloo, 2 processes): the global batch's loss and gradients
equal one process's on the concatenated batch; a 2-rank ``rsdml train`` works end to end,
stops and resumes; ``rsdml embed`` and ``rsdml index`` shard over the ranks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from rsdml.config import TrainConfig
from rsdml.training import distributed
from rsdml.training.checkpoint import load_checkpoint
from rsdml.training.methods.registry import METHODS, create_method
from rsdml.training.trainer import global_terms

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this PyTorch build has no torch.distributed with gloo",
)

SRC = Path(__file__).resolve().parents[2] / "src"
B, BU, D_IN, D, C = 11, 7, 12, 8, 5  # odd: the 2 ranks' slices differ in size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _problem(name: str) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, torch.Tensor]]:
    """A linear 'network', the method and one global batch, identical in every process."""
    torch.manual_seed(0)
    labeled = torch.arange(20) % C  # the labelled set; the batch is 11 of its images
    cfg = TrainConfig(method=name, embedding_dim=D)
    net = torch.nn.Linear(D_IN, D).double()
    method = create_method(cfg, C, labeled).double()
    method.reg_weight = 1.0
    index = torch.randperm(20)[:B]
    batch = {"x_l": torch.randn(B, D_IN, dtype=torch.float64), "y": labeled[index],
             "index": index, "x_u": torch.randn(BU, D_IN, dtype=torch.float64),
             "x_w": torch.randn(BU, D_IN, dtype=torch.float64)}
    if method.needs_start_embeddings:
        method.on_train_start(torch.randn(20, D, dtype=torch.float64))
    return net, method, batch


def _step(net, method, batch, d: distributed.Dist) -> dict[str, torch.Tensor]:
    """One backward as the trainer does it: this rank's slices through the (DDP) network, the
    method on the gathered global batch, the method's gradients averaged."""
    x_l = distributed.shard(batch["x_l"], d)
    x_u = distributed.shard(batch["x_u"], d) if method.uses_unlabeled else batch["x_u"][:0]
    if method.uses_views:  # the strong view, then the weak one (here with a graph too)
        x_u = torch.cat([x_u, distributed.shard(batch["x_w"], d)])
    emb = net(torch.cat([x_l, x_u]))
    terms = global_terms(method, emb, len(x_l), batch["y"], batch["index"], BU)
    terms["total"].backward()
    distributed.average_gradients(method.parameters())
    module = net.module if hasattr(net, "module") else net
    out = {f"term.{k}": v.detach() for k, v in terms.items()}
    out.update({f"grad.net.{k}": p.grad for k, p in module.named_parameters()})
    out.update({f"grad.method.{k}": p.grad for k, p in method.named_parameters()})
    return out


def _fast_cfg(scenes: str, out: str) -> TrainConfig:
    """Fast mode (cached frozen-trunk features, no augmentation): 2 ranks follow one
    process's trajectory up to float summation order."""
    return TrainConfig(data=scenes, out=out, pretrained="none", image_size=32, epochs=3,
                       batch_size=8, unlabeled_batch_size=8, freeze_backbone=True, lr=0.01,
                       method="hr-s2dml",  # the plain features: no per-rank view draws
                       head_warmup_epochs=0, warmup_epochs=0.5, bnm_warmup_epochs=1,
                       eval_every=100, device="cpu", quiet=True, report=False)


def _worker(rank: int, world: int, port: int, out: str, scenes: str, run: str, npz: str,
            index_dir: str, fast_run: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from rsdml.losses import BatchNuclearNormLoss

    d = distributed.init("cpu")
    results = {}
    for name in METHODS:
        net, method, batch = _problem(name)
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        results[name] = _step(ddp, method, batch, d)
    # The naive way: each rank's BNM on its own slice, averaged over the ranks.
    net, method, batch = _problem("hr-s2dml")
    probs = method.predict_proba(net(distributed.shard(batch["x_u"], d)))
    naive = BatchNuclearNormLoss()(probs).detach().clone()
    dist.all_reduce(naive)
    results["naive_bnm"] = {"value": naive / world}
    if rank == 0:
        torch.save(results, out)
    # The library calls of `rsdml train` (fast mode), `rsdml embed` and `rsdml index`, in
    # this group of 2 ranks.
    from rsdml.retrieval.indexing import build_index
    from rsdml.training.embed import embed_folder
    from rsdml.training.runner import train

    train(_fast_cfg(scenes, fast_run))
    embed_folder(scenes, run, npz, quiet=True)
    build_index(scenes, index_dir, run_dir=run, quiet=True)
    distributed.teardown()


@pytest.fixture(scope="module")
def two_ranks(tiny_scenes, two_rank_run, tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    """The results of rank 0 of a 2-process gloo group (spawned once for all checks), and
    ``two_ranks["files"]["npz"]``: the file its sharded ``embed_folder`` wrote."""
    tmp = tmp_path_factory.mktemp("ddp")
    out, npz, index, fast = tmp / "rank0.pt", tmp / "two.npz", tmp / "index", tmp / "fast"
    torch.multiprocessing.spawn(_worker, nprocs=2, args=(2, _free_port(), str(out),
                                                         str(tiny_scenes), str(two_rank_run),
                                                         str(npz), str(index), str(fast)))
    results = torch.load(out, weights_only=True)
    results["files"] = {"npz": npz, "index": index, "fast": fast}
    return results


@pytest.mark.parametrize("name", list(METHODS))
def test_two_ranks_give_the_loss_and_gradients_of_one_process(two_ranks, name):
    """2 ranks x B/2 = 1 process x B, every method (the BNM term included), float64."""
    net, method, batch = _problem(name)
    one = _step(net, method, batch, distributed.Dist())
    two = two_ranks[name]
    assert one.keys() == two.keys()
    assert any(k.startswith("grad.net.") for k in one)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-9, atol=1e-12, msg=k)


def test_per_rank_average_of_the_nuclear_norm_is_another_objective(two_ranks):
    """The check above can fail: averaging each rank's BNM is not the global batch's BNM."""
    global_bnm = two_ranks["hr-s2dml"]["term.hr"]
    naive = two_ranks["naive_bnm"]["value"]
    assert abs(float(naive) - float(global_bnm)) > 1e-3


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 3}, "--batch-size 3 is the global batch, split over 2 ranks; give at least 4"),
    ({"unlabeled_batch_size": 2}, "--unlabeled-batch-size 2 is the global batch"),
    ({"sync_bn": True}, "--sync-bn needs CUDA GPUs"),
])
def test_a_group_refuses_what_it_cannot_run(options, message):
    from rsdml.errors import RsdmlError
    from rsdml.training.runner import check_ranks

    cfg = TrainConfig(device="cpu", batch_size=8, unlabeled_batch_size=8).replace(**options)
    with pytest.raises(RsdmlError, match=message):
        check_ranks(cfg, distributed.Dist(rank=0, world_size=2))


# --------------------------------------------------------------------------- end to end
#: A short run with every phase (head warm-up, trunk warm-up, ramp), a checkpoint every 2 epochs.
RUN = ["--pretrained", "none", "--image-size", "32", "--batch-size", "8",
       "--unlabeled-batch-size", "8", "--device", "cpu", "--quiet", "--eval-batch-size", "64",
       "--no-report", "--epochs", "6", "--lr", "0.003", "--head-warmup-epochs", "0.5",
       "--warmup-epochs", "1", "--bnm-warmup-epochs", "1.5", "--eval-every", "100",
       "--bn", "frozen", "--checkpoint-every", "2", "--epoch-unit", "labeled"]


def _torchrun(*args: str, wait: bool = True) -> subprocess.Popen[str] | subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "rsdml", *args]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if not wait:
        return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=300)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    return {**{f"model.{k}": v for k, v in state["model"].items()},
            **{f"method.{k}": v for k, v in state["method"].items()}}


@pytest.fixture(scope="module")
def two_rank_run(tiny_scenes, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ddp-run") / "run"
    done = _torchrun("train", "--data", str(tiny_scenes), "--out", str(run), *RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done (") == 1  # rank 0 alone speaks
    return run


def test_two_rank_fast_mode_training_follows_one_process(two_ranks, tiny_scenes, tmp_path):
    """Without augmentation (fast mode) a 2-rank run is the 1-process run: the same weights
    to float summation order (rtol 1e-4) and the same final kNN accuracy to one test image."""
    from rsdml.training.runner import train

    one = tmp_path / "one"
    result = train(_fast_cfg(str(tiny_scenes), str(one)))
    two = two_ranks["files"]["fast"]
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    final = json.loads((two / "final_metrics.json").read_text())
    assert final["knn_acc"] == pytest.approx(result["knn_acc"], abs=1 / 52 + 1e-9)


def test_two_rank_run_writes_one_set_of_files_and_matches_one_rank(two_rank_run, tiny_scenes,
                                                                   tmp_path):
    """A 2-rank run trains, evaluates and writes one run folder; its final metrics are within
    0.15 of a 1-process run's (same global batches, but the augmentation draws differ per
    rank, and on 52 test images after 6 epochs that moves kNN accuracy by up to ~0.1; the
    tight check is the fast-mode test above)."""
    from rsdml.cli.main import main

    rows = [json.loads(line) for line in (two_rank_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 6]  # one line per evaluation, not one per rank
    assert len(list((two_rank_run / "tb").iterdir())) == 1
    assert sorted(p.name for p in (two_rank_run / "checkpoints").iterdir()) == ["last.pt"]
    two = json.loads((two_rank_run / "final_metrics.json").read_text())
    one_run = tmp_path / "one"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", str(tiny_scenes), "--out", str(one_run), *RUN])
    assert exc.value.code == 0
    one = json.loads((one_run / "final_metrics.json").read_text())
    assert two["epoch"] == one["epoch"] == 6
    for key in ("knn_acc", "map_at_r", "nmi"):
        assert two[key] == pytest.approx(one[key], abs=0.15), key
    train_two = [json.loads(line) for line in (two_rank_run / "train_log.jsonl").read_text().splitlines()]
    train_one = [json.loads(line) for line in (one_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train_two] == [r["step"] for r in train_one]  # global batches


def test_sigterm_to_the_torchrun_group_saves_once_and_resumes_exactly(two_rank_run, tiny_scenes,
                                                                      tmp_path):
    """SIGTERM to every process of the group (torchrun passes it on too): one checkpoint, all
    ranks exit; --resume under torchrun then ends with the weights of the uninterrupted run."""
    run = tmp_path / "killed"
    proc = _torchrun("train", "--data", str(tiny_scenes), "--out", str(run), *RUN, wait=False)
    assert isinstance(proc, subprocess.Popen)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-3000:]
    assert "checkpoint saved" in out, out[-3000:]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert 4 <= state["global_step"] < 12  # stopped part way (2 steps an epoch, 6 epochs)
    done = _torchrun("train", "--resume", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _weights(two_rank_run), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_embed_under_torchrun_shards_and_merges_in_order(two_ranks, two_rank_run, tiny_scenes,
                                                        tmp_path):
    """`rsdml embed` over 2 ranks: one file, the images in the order one process writes them,
    the same vectors."""
    import numpy as np

    from rsdml.training.embed import embed_folder

    one = tmp_path / "one.npz"
    embed_folder(tiny_scenes, two_rank_run, one, quiet=True)
    a, b = np.load(one), np.load(two_ranks["files"]["npz"])
    assert len(a["paths"]) == 64 and list(a["paths"]) == list(b["paths"])
    np.testing.assert_allclose(b["embeddings"], a["embeddings"], rtol=1e-4, atol=1e-5)


def test_index_under_torchrun_holds_what_one_process_indexes(two_ranks, two_rank_run,
                                                             tiny_scenes, tmp_path):
    """`rsdml index` over 2 ranks: one index (rank 0 wrote it) with the images and vectors
    one process indexes."""
    import numpy as np

    from rsdml.retrieval.archive import ArchiveIndex
    from rsdml.retrieval.indexing import build_index

    one = build_index(tiny_scenes, tmp_path / "one", run_dir=two_rank_run, quiet=True)
    two = ArchiveIndex.open(two_ranks["files"]["index"])
    assert [e["path"] for e in two.entries] == [e["path"] for e in one.entries]
    assert len(two) == 64
    np.testing.assert_allclose(two.vectors, one.vectors, rtol=1e-4, atol=1e-5)

"""minidl.distributed: the sampler, SyncBatchNorm's math and DDP's plumbing in one process,
then the real thing under `mpirun -n 2` (skipped, with the reason, without MPI):
2 ranks at global batch B give one process's parameters at batch B (float64, 1e-10),
the sampler covers each epoch exactly once, a killed or hung rank stops the others with
a clear error within the timeout, and resume after a kill equals the uninterrupted run."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minidl
import minidl.distributed as dist
from minidl import nn, optim
from minidl.data import DataLoader, TensorDataset
from minidl.distributed.group import SingleProcessGroup
from minidl.distributed.sync_batchnorm import sync_batch_norm
from minidl.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "mpi"
sys.path.insert(0, str(SCRIPTS))
from cases import CASES, build, data  # noqa: E402

# ---------------------------------------------------------------- DistributedSampler


@pytest.mark.parametrize("n,k,drop_last", [(10, 3, False), (10, 3, True), (12, 4, False),
                                           (5, 7, False), (1, 2, False), (23, 2, True)])
def test_sampler_matches_torch_without_shuffle(n, k, drop_last):
    tud = pytest.importorskip("torch.utils.data")
    for r in range(k):
        mine = dist.DistributedSampler(range(n), k, r, shuffle=False, drop_last=drop_last)
        ref = tud.DistributedSampler(range(n), k, r, shuffle=False, drop_last=drop_last)
        assert list(mine) == list(ref)
        assert len(mine) == len(ref)


@pytest.mark.parametrize("n,k,drop_last", [(23, 2, False), (23, 3, True), (30, 5, False)])
def test_sampler_shards_partition_each_epoch(n, k, drop_last):
    for epoch in range(3):
        shards = []
        for r in range(k):
            s = dist.DistributedSampler(range(n), k, r, seed=4, drop_last=drop_last)
            s.set_epoch(epoch)
            shards.append(list(s))
        assert len({len(x) for x in shards}) == 1
        flat = [i for x in shards for i in x]
        if drop_last:  # every kept index once, n - n % k of them
            assert len(flat) == len(set(flat)) == n - n % k
        else:  # every index at least once, the padding repeats the first ones
            assert set(flat) == set(range(n)) and len(flat) == -(-n // k) * k
    s = dist.DistributedSampler(range(n), k, 0, seed=4)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0  # a new order every epoch
    s.set_epoch(0)
    assert list(s) == e0


def test_sampler_one_replica_draws_the_shuffled_dataloaders_batches():
    x = np.arange(40.0)[:, None]
    ds = TensorDataset(x, np.arange(40))
    plain = DataLoader(ds, batch_size=8, shuffle=True, seed=11)
    sampler = dist.DistributedSampler(ds, 1, 0, seed=11)
    sampled = DataLoader(ds, batch_size=8, sampler=sampler)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for (a, _), (b, _) in zip(plain, sampled):
            np.testing.assert_array_equal(a.data, b.data)


def test_global_batches_are_the_union_of_rank_batches():
    n, big, k = 48, 12, 3
    ds = TensorDataset(np.arange(float(n))[:, None], np.arange(n))
    single = [b.data.ravel() for b, _ in DataLoader(ds, batch_size=big, shuffle=True, seed=2)]
    per_rank = [[b.data.ravel() for b, _ in DataLoader(
        ds, batch_size=big // k, sampler=dist.DistributedSampler(ds, k, r, seed=2))]
        for r in range(k)]
    for i, batch in enumerate(single):
        union = np.concatenate([per_rank[r][i] for r in range(k)])
        assert sorted(union) == sorted(batch)


def test_sampler_errors_and_state():
    with pytest.raises(ValueError, match=r"Invalid rank 3, rank should be in the interval"):
        dist.DistributedSampler(range(4), 3, 3)
    with pytest.raises(RuntimeError, match="init_process_group"):
        dist.DistributedSampler(range(4))
    with pytest.raises(ValueError, match="mutually exclusive"):
        DataLoader(range(4), sampler=dist.DistributedSampler(range(4), 1, 0), shuffle=True)
    s = dist.DistributedSampler(range(9), 2, 1, seed=3)
    s.set_epoch(5)
    t = dist.DistributedSampler(range(9), 2, 0, seed=3)
    t.load_state_dict(s.state_dict())
    assert t.epoch == 5 and t.rank == 0  # the rank is this process's, not the saver's
    with pytest.raises(ValueError, match="seed"):
        dist.DistributedSampler(range(9), 2, 0, seed=4).load_state_dict(s.state_dict())


def test_dataloader_with_sampler_resumes_mid_epoch():
    ds = TensorDataset(np.arange(30.0)[:, None], np.arange(30))

    def loader():
        return DataLoader(ds, batch_size=4, sampler=dist.DistributedSampler(ds, 2, 1, seed=1))
    a = loader()
    a.sampler.set_epoch(2)
    it = iter(a)
    next(it)
    state = a.state_dict()
    rest = [b.data.ravel().tolist() for b, _ in it]
    b = loader()
    b.load_state_dict(state)
    assert [x.data.ravel().tolist() for x, _ in b] == rest


# ------------------------------------------------------- SyncBatchNorm in one process

@pytest.mark.parametrize("shape,channels_last", [((6, 3), False), ((5, 2, 3, 3), False),
                                                 ((5, 2, 3, 3), True)])
def test_sync_batch_norm_one_process_equals_batch_norm(shape, channels_last):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) * 3 + 1
    g = rng.normal(size=shape)
    c = shape[1]
    outs = []
    for sync in (False, True):
        xt = minidl.tensor(x)
        if channels_last:
            xt = xt.to(memory_format=minidl.channels_last)
        xt.requires_grad_(True)
        w = minidl.tensor(np.linspace(0.5, 2, c), requires_grad=True)
        b = minidl.tensor(np.linspace(-1, 1, c), requires_grad=True)
        rm, rv = minidl.zeros(c, dtype=minidl.float64), minidl.ones(c, dtype=minidl.float64)
        if sync:
            y = sync_batch_norm(xt, rm, rv, w, b, 0.1, 1e-5, SingleProcessGroup())
        else:
            y = F.batch_norm(xt, rm, rv, w, b, True, 0.1, 1e-5)
        y.backward(g)
        outs.append([y.data, xt.grad.data, w.grad.data, b.grad.data, rm.data, rv.data])
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_sync_batch_norm_gradcheck():
    rng = np.random.default_rng(1)
    x = minidl.tensor(rng.normal(size=(4, 3, 2, 2)), requires_grad=True)
    w = minidl.tensor(rng.normal(size=3), requires_grad=True)
    b = minidl.tensor(rng.normal(size=3), requires_grad=True)
    minidl.gradcheck(lambda x, w, b: sync_batch_norm(x, None, None, w, b, 0.1, 1e-5,
                                                     SingleProcessGroup()), (x, w, b))


def test_convert_sync_batchnorm_keeps_order_and_shares_tensors():
    model = build("cnn_bn")
    before = [type(m).__name__ for m in model]
    weight = model[1].weight
    converted = dist.SyncBatchNorm.convert_sync_batchnorm(model)
    assert [type(m).__name__ for m in converted] == [
        "SyncBatchNorm" if n == "BatchNorm2d" else n for n in before]
    assert converted[1].weight is weight
    x = minidl.tensor(data("cnn_bn")[0][:4])
    ref = build("cnn_bn")
    np.testing.assert_allclose(converted(x).data, ref(x).data, rtol=1e-12)
    with pytest.raises(minidl.ShapeError, match="SyncBatchNorm"):
        dist.SyncBatchNorm(3)(minidl.zeros(2, 4))


def test_ddp_needs_a_process_group_and_queue_callback_needs_a_backward():
    with pytest.raises(dist.DistributedError, match="init_process_group"):
        dist.DistributedDataParallel(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="no backward pass"):
        minidl.autograd.queue_callback(lambda: None)


def test_queue_callback_runs_once_after_the_gradients():
    w = minidl.tensor([2.0], requires_grad=True)
    seen = []

    def cb():
        seen.append(w.grad.data.copy())

    def backward(g, needs):
        minidl.autograd.queue_callback(cb)
        minidl.autograd.queue_callback(cb)  # the same callback: queued once
        return (g,)
    y = minidl.autograd.record(w.data * 1, (w,), backward, "Probe")
    (y * w).sum().backward()
    assert len(seen) == 1 and seen[0][0] == pytest.approx(2.0 + 2.0)


def test_threads_per_rank():
    from minidl import _threads
    assert _threads.threads_per_rank(2, cores=16, allowed=16) == 8
    assert _threads.threads_per_rank(3, cores=2, allowed=2) == 1
    assert _threads.threads_per_rank(2, cores=16, allowed=4) == 4
    env = {"OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMP_NUM_THREADS": "3"}
    done = _threads.apply_defaults(env)
    assert env["OMP_NUM_THREADS"] == "3" and "OMP_NUM_THREADS" not in done
    assert env["NUMBA_NUM_THREADS"] == str(_threads.threads_per_rank(2))
    assert _threads.apply_defaults({}) == {}


def test_info_says_why_mpi_is_unavailable(monkeypatch):
    from minidl import info
    from minidl.distributed import group
    monkeypatch.setattr(group, "_MPI", None)
    monkeypatch.setattr(group, "_MPI_ERROR", "mpi4py is not installed: pip install ...")
    assert info.mpi_status().startswith("not available: mpi4py is not installed")


def test_cli_under_a_launcher_without_mpi_says_so(monkeypatch, tmp_path, capsys):
    from minidl.cli import main
    from minidl.distributed import group
    monkeypatch.setattr(group, "_MPI", None)
    monkeypatch.setattr(group, "_MPI_ERROR", "mpi4py is not installed")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "one of 2 ranks, but distributed training is unavailable: mpi4py is not " \
           "installed" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------- under mpirun -n 2

def _mpi_missing():
    if not dist.is_available():
        return dist.unavailable_reason()
    if shutil.which("mpirun") is None:
        return "mpirun is not on PATH (Debian: apt-get install -y openmpi-bin)"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=f"MPI: {_mpi_missing()}")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2"]


def mpirun(args, timeout=120, env=None):
    """Run `mpirun -n 2 python ARGS` in its own session; kill the whole session if it
    outlives `timeout` (so a hang fails the test instead of hanging it)."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    proc = subprocess.Popen(MPIRUN + [sys.executable] + args, cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"mpirun still running after {timeout} s:\n{out}")
    return proc.returncode, out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    rc, log = mpirun([str(SCRIPTS / "equivalence.py"), str(out)])
    assert rc == 0, log
    return out, json.loads((out / "report.json").read_text())


def one_process(name):
    """The reference: one process, global batch B, the shuffled DataLoader of seed 3."""
    case = CASES[name]
    model = build(name)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = data(name)
    loader = DataLoader(TensorDataset(x, y), batch_size=case["batch"], shuffle=True, seed=3)
    for _ in range(case["epochs"]):
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.state_dict()


@pytest.mark.slow
@needs_mpi
@pytest.mark.parametrize("name", ["mlp", "mlp_bn", "cnn_bn"])
def test_two_ranks_equal_one_process(two_ranks, name):
    out, report = two_ranks
    assert report["world"] == 2
    assert report[name]["same_on_all_ranks"]
    if name == "cnn_bn":  # a tiny bucket cap: several buckets
        assert len(report[name]["buckets"]) > 1
    got = np.load(out / f"{name}.npz")
    ref = one_process(name)
    assert set(got.files) == set(ref)
    for key, value in ref.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-10, atol=1e-10, err_msg=key)


@pytest.mark.slow
@needs_mpi
def test_no_sync_accumulates_then_averages(two_ranks):
    out, _ = two_ranks
    got = np.load(out / "mlp_accumulated.npz")
    for key, value in one_process("mlp").items():
        np.testing.assert_allclose(got[key], value, rtol=1e-10, atol=1e-10, err_msg=key)


@pytest.mark.slow
@needs_mpi
def test_per_rank_batch_norm_is_not_global_batch_norm(two_ranks):
    """Documented difference: without SyncBatchNorm each rank normalizes its own half."""
    out, _ = two_ranks
    got = np.load(out / "mlp_bn_local.npz")
    ref = one_process("mlp_bn_local")
    assert max(np.abs(got[k] - ref[k]).max() for k in ref if "weight" in k) > 1e-6


@pytest.mark.slow
@needs_mpi
def test_sampler_covers_every_example_once_per_epoch_across_ranks(two_ranks):
    _, report = two_ranks
    ranks = report["sampler"]  # [rank][drop_last][epoch] -> indices
    for drop_last in (0, 1):
        for epoch in range(3):
            flat = [i for r in ranks for i in r[drop_last][epoch]]
            if drop_last:
                assert len(flat) == len(set(flat)) == 22
            else:  # 23 examples over 2 ranks: one is padded in (repeated)
                assert set(flat) == set(range(23)) and len(flat) == 24


TRAIN = ["train", "--dataset", "fashion-mnist", "--steps", "12", "--eval-every", "4",
         "--checkpoint-every", "4", "--no-progress", "--bn", "--sync-bn"]


def _driver(out, *extra, env=None, timeout=120):
    return mpirun([str(SCRIPTS / "cli_driver.py")] + TRAIN + ["--out", str(out)] +
                  list(extra), timeout=timeout, env=env)


needs_data = pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                                reason="apt-get install -y dataset-fashion-mnist")


@pytest.mark.slow
@needs_mpi
@needs_data
def test_killed_rank_stops_the_others_and_resume_equals_uninterrupted(tmp_path):
    rc, log = _driver(tmp_path / "full")
    assert rc == 0, log
    pids = tmp_path / "pids"
    rc, log = _driver(tmp_path / "cut", env={"MINIDL_TEST_SIGNAL": "1:9:KILL",
                                             "MINIDL_TEST_PIDFILE": str(pids)})
    assert rc != 0, log
    assert "rank 1" in log and "rerun with --resume" in log, log
    cut = minidl.load(tmp_path / "cut" / "checkpoint.npz")
    assert cut["step"] == 8  # the last checkpoint before the kill
    rc, log = _driver(tmp_path / "cut", "--resume")
    assert rc == 0, log
    a = minidl.load(tmp_path / "full" / "checkpoint.npz")
    b = minidl.load(tmp_path / "cut" / "checkpoint.npz")
    assert a["step"] == b["step"] == 12
    for key, value in a["model"].items():
        np.testing.assert_array_equal(b["model"][key], value, err_msg=key)
    assert [r["test_acc"] for r in a["history"]] == [r["test_acc"] for r in b["history"]]
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [4, 8, 12]


@pytest.mark.slow
@needs_mpi
@needs_data
def test_hung_rank_makes_the_others_time_out_with_a_clear_error(tmp_path):
    pids = tmp_path / "pids"
    rc, log = _driver(tmp_path / "hang", timeout=90,
                      env={"MINIDL_TEST_SIGNAL": "1:5:STOP", "MINIDL_DIST_TIMEOUT": "3",
                           "MINIDL_TEST_PIDFILE": str(pids)})
    try:
        assert rc != 0, log
        assert "rank 0 of 2 waited 3 s in" in log, log
        assert "MINIDL_DIST_TIMEOUT" in log
    finally:  # never leave a stopped rank behind
        for pid in pids.read_text().split() if pids.exists() else []:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _max_model_difference(a_path, b_path):
    a, b = minidl.load(a_path), minidl.load(b_path)
    assert a["step"] == b["step"]
    return max(float(np.abs(a["model"][k].astype(np.float64) - b["model"][k]).max())
               for k in a["model"])


@needs_mpi
@needs_data
@pytest.mark.parametrize("command", [
    ["figure1", "--dataset", "fashion-mnist", "--steps", "6", "--eval-every", "3",
     "--sync-bn", "--no-progress"],
    ["ablation", "--variants", "bn-baseline", "--seeds", "1", "--steps", "3", "--base-lr",
     "0.02", "--eval-examples", "50", "--final-examples", "50", "--bn-stats-batches", "2",
     "--width", "0.25", "--jobs", "1", "--sync-bn", "--no-progress"]], ids=["figure1",
                                                                          "ablation"])
@pytest.mark.slow
def test_cli_two_ranks_follow_one_process(tmp_path, command):
    """float32 end to end: equal up to rounding, and only rank 0 wrote (one summary)."""
    from minidl.cli import main
    assert main(command + ["--out", str(tmp_path / "one")]) == 0
    rc, log = mpirun(["-m", "minidl"] + command + ["--out", str(tmp_path / "two")])
    assert rc == 0, log
    if command[0] == "figure1":
        assert log.count("Figure 1 reproduction") == 1, log
        pairs = [("nobn", "nobn"), ("bn", "bn")]
    else:
        assert log.count("wrote ") == 1, log
        pairs = [("bn-baseline/seed-0", "bn-baseline/seed-0")]
    for a, b in pairs:
        diff = _max_model_difference(tmp_path / "one" / a / "checkpoint.npz",
                                     tmp_path / "two" / b / "checkpoint.npz")
        assert diff < 1e-5, (a, diff)


def test_resuming_with_another_number_of_ranks_is_a_clear_error(tmp_path):
    from minidl.train import Trainer
    model = build("mlp")
    x, y = data("mlp")
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1),
                      DataLoader(TensorDataset(x, y), batch_size=4), progress=False)
    state = trainer.state_dict()
    assert state["world_size"] == 1
    state["world_size"] = 2
    with pytest.raises(ValueError, match=r"written by a run of 2 process\(es\) and this run "
                                         r"has 1.*mpirun -n 2"):
        trainer.load_state_dict(state)

"""The training loop, the recorder, BN population statistics and the experiment CLI."""
import csv
import json
import os
import signal

import numpy as np
import pytest

import minidl as md
from minidl import nn, optim
from minidl.data import DataLoader, TensorDataset
from minidl.models import mlp
from minidl.train import ActivationRecorder, DivergenceError, Trainer, population_statistics

FASHION_DIR = "/usr/share/datasets/fashion-mnist"

needs_fashion = pytest.mark.skipif(not os.path.isdir(FASHION_DIR),
                                   reason="apt-get install -y dataset-fashion-mnist")


def toy_data(n=240, d=20, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, d)).astype(np.float32) * 2
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.standard_normal((n, d)).astype(np.float32))
    return x.astype(np.float32), y.astype(np.int64)


def make_trainer(out_dir, bn=True, seed=0, checkpoint_every=10, eval_every=10):
    md.manual_seed(seed)
    x, y = toy_data()
    model = mlp(in_features=20, hidden=(16, 16), num_classes=4, bn=bn, init_std=0.1)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, seed=seed)
    test = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)
    sig = [m for m in model.modules() if isinstance(m, nn.Sigmoid)][-1]
    rec = ActivationRecorder(sig, unit=1, name="sig")
    return Trainer(model, opt, loader, eval_loader=test, eval_every=eval_every,
                   checkpoint_every=checkpoint_every, out_dir=out_dir, recorders=[rec],
                   progress=False)


def params(trainer):
    return {k: v.copy() for k, v in trainer.model.state_dict().items()}


@pytest.fixture
def one_thread():
    prev = md.get_num_threads()
    md.set_num_threads(1)
    yield
    md.set_num_threads(prev)


def test_resume_is_bit_exact(tmp_path, one_thread):
    full = make_trainer(tmp_path / "full")
    full.fit(40)
    first = make_trainer(tmp_path / "split")
    first.fit(20)
    resumed = make_trainer(tmp_path / "split", seed=99)  # different init: must be overwritten
    resumed.fit(40, resume=True)
    assert resumed.step == 40
    a, b = params(full), params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [r["test_acc"] for r in full.history] == [r["test_acc"] for r in resumed.history]
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [10, 20, 30, 40]


def test_ctrl_c_saves_a_checkpoint_and_resume_matches(tmp_path, one_thread):
    full = make_trainer(tmp_path / "full")
    full.fit(30)

    t = make_trainer(tmp_path / "run", checkpoint_every=1000)
    original_step = t.train_step

    def step_then_interrupt():
        loss = original_step()
        if t.step == 12:  # the 13th step is under way: Ctrl-C arrives now
            os.kill(os.getpid(), signal.SIGINT)
        return loss
    t.train_step = step_then_interrupt
    result = t.fit(30)
    assert result["interrupted"] and t.step == 13
    state = md.load(tmp_path / "run" / "checkpoint.npz")
    assert state["step"] == 13  # the step that was running finished before saving

    resumed = make_trainer(tmp_path / "run")
    resumed.fit(30, resume=True)
    for k, v in params(full).items():
        np.testing.assert_array_equal(v, params(resumed)[k], err_msg=k)


def test_loss_becoming_nan_stops_with_a_clear_error(tmp_path):
    t = make_trainer(tmp_path, bn=False)
    for g in t.optimizer.param_groups:
        g["lr"] = 1e38  # float32 weights overflow to inf within a few steps
    with pytest.raises(FloatingPointError, match="no checkpoint was written"):
        t.fit(50)
    assert not (tmp_path / "checkpoint.npz").exists()  # no diverged state saved


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    t = make_trainer(tmp_path, bn=False, checkpoint_every=5)
    t.fit(5)  # a good checkpoint at step 5
    good = params(t)
    for g in t.optimizer.param_groups:
        g["lr"] = 1e38
    with pytest.raises(DivergenceError, match=r"checkpoint.npz \(step 5\)") as err:
        t.fit(50)
    assert err.value.step > 5 and err.value.last_good[0] == 5
    state = md.load(tmp_path / "checkpoint.npz")
    assert state["step"] == 5
    for k, v in good.items():
        np.testing.assert_array_equal(state["model"][k], v, err_msg=k)


def test_recorder_percentiles_match_numpy():
    md.manual_seed(0)
    model = mlp(in_features=20, hidden=(8,), num_classes=3, bn=False, init_std=0.5)
    sig = [m for m in model.modules() if isinstance(m, nn.Sigmoid)][-1]
    rec = ActivationRecorder(sig, unit=3)
    x = md.tensor(toy_data(n=50)[0])
    with rec:
        model(x)
    snap = rec.snapshot(step=7)
    pre = model[1](model[0](x)).data[:, 3]  # Flatten -> Linear: the sigmoid's input
    assert snap["step"] == 7
    np.testing.assert_allclose([snap["p15"], snap["p50"], snap["p85"]],
                               np.percentile(pre.astype(np.float64), [15, 50, 85]), rtol=1e-6)
    model(x)  # not recording: nothing collected
    with pytest.raises(RuntimeError, match="nothing was recorded"):
        rec.snapshot(step=8)


def test_population_statistics_follow_algorithm_2():
    md.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3))
    rng = np.random.default_rng(0)
    batches = [md.tensor(rng.standard_normal((8, 5)).astype(np.float32) * 3 + 1)
               for _ in range(4)]
    bn = model[1]
    before = bn.running_mean.data.copy(), bn.running_var.data.copy()
    with population_statistics(model, batches):
        assert not model.training
        z = [model[0](b).data.astype(np.float64) for b in batches]
        np.testing.assert_allclose(bn.running_mean.data, np.mean([a.mean(0) for a in z], 0),
                                   rtol=1e-5)
        np.testing.assert_allclose(bn.running_var.data,
                                   np.mean([a.var(0) * 8 / 7 for a in z], 0), rtol=1e-5)
    np.testing.assert_array_equal(bn.running_mean.data, before[0])  # restored
    np.testing.assert_array_equal(bn.running_var.data, before[1])
    assert model.training


def test_mlp_follows_the_paper():
    plain, with_bn = mlp(bn=False), mlp(bn=True)
    lin = [m for m in with_bn.modules() if isinstance(m, nn.Linear)]
    assert [m.weight.shape for m in lin] == [(100, 784), (100, 100), (100, 100), (10, 100)]
    assert [m.bias is None for m in lin] == [True, True, True, False]  # beta replaces b
    assert sum(isinstance(m, nn.BatchNorm1d) for m in with_bn.modules()) == 3
    assert sum(isinstance(m, nn.BatchNorm1d) for m in plain.modules()) == 0
    w = lin[0].weight.data
    assert abs(w.std() - 0.01) < 0.001 and abs(w.mean()) < 0.001
    order = [type(m).__name__ for m in with_bn]
    assert order[1:4] == ["Linear", "BatchNorm1d", "Sigmoid"]


@pytest.mark.slow
@needs_fashion
def test_figure1_quick_on_real_data(tmp_path):
    from minidl.cli import main
    out = tmp_path / "fig"
    rc = main(["figure1", "--quick", "--steps", "400", "--eval-every", "100",
               "--dataset", "fashion-mnist", "--out", str(out), "--no-progress"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "figure1.csv")))
    assert [int(r["step"]) for r in rows] == [100, 200, 300, 400]
    for r in rows:
        for net in ("nobn", "bn"):
            p = [float(r[f"{net}_sigmoid_in_p{q}"]) for q in (15, 50, 85)]
            assert p[0] <= p[1] <= p[2]
        assert 0 <= float(r["nobn_test_acc"]) <= 1
    assert float(rows[-1]["bn_test_acc"]) > 0.6          # BN learns fast at lr 0.01
    summary = json.loads((out / "summary.json").read_text())
    assert summary["networks"]["bn"]["bn_eval"] == "running"
    assert (out / "summary.txt").read_text().startswith("Figure 1 reproduction on Fashion-MNIST")
    assert (out / "figure1.png").stat().st_size > 10000
    assert (out / "bn" / "checkpoint.npz").exists()


@pytest.mark.slow
@needs_fashion
def test_train_cli_population_statistics_and_resume(tmp_path, capsys):
    from minidl.cli import main
    args = ["train", "--bn", "--dataset", "fashion-mnist", "--eval-every", "100",
            "--bn-eval", "population", "--bn-stats-batches", "5", "--out", str(tmp_path),
            "--no-progress"]
    assert main(args + ["--steps", "100"]) == 0
    assert main(args + ["--steps", "200", "--resume"]) == 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["step"] for r in rows] == [100, 200]
    assert all(r["bn_eval"] == "population" for r in rows)
    assert rows[-1]["test_acc"] > 0.5


def test_missing_mnist_gives_a_helpful_error(tmp_path, monkeypatch):
    from minidl.data import DatasetNotFoundError
    from minidl.experiments.figure1 import load_data
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    import minidl.data.datasets as ds
    monkeypatch.setattr(ds, "MIRRORS", {k: ["http://127.0.0.1:9/"] for k in ds.MIRRORS})
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte"):
        load_data("mnist", root=str(tmp_path))


@pytest.mark.slow
@needs_fashion
def test_figure1_seeds_reports_median_and_range(tmp_path):
    from minidl.cli import main
    out = tmp_path / "fig"
    assert main(["figure1", "--quick", "--steps", "200", "--eval-every", "100", "--seeds", "2",
                 "--dataset", "fashion-mnist", "--out", str(out), "--no-progress"]) == 0
    per_seed = [json.loads((out / f"seed-{k}" / "summary.json").read_text()) for k in (0, 1)]
    agg = json.loads((out / "summary.json").read_text())["seeds"]
    assert agg["seeds"] == [0, 1]
    finals = [s["networks"]["bn"]["final_test_acc"] for s in per_seed]
    bn = agg["networks"]["bn"]["final_test_acc"]
    assert bn["min"] == min(finals) and bn["max"] == max(finals)
    assert bn["median"] == pytest.approx(sum(finals) / 2)
    assert finals[0] != finals[1]  # the seeds really differ
    text = (out / "summary.txt").read_text()
    assert text.startswith("Figure 1 on Fashion-MNIST, 2 seeds [0, 1]")
    assert (out / "figure1.png").stat().st_size > 10000

"""Resume is exact in its logged numbers too, and options given with --resume are applied
and announced (issue 13, items 4 and 8)."""
import json
import os
import signal

import numpy as np
import pytest

import minidl as md
from minidl import optim
from minidl.data import DataLoader, TensorDataset
from minidl.models import mlp
from minidl.train import Trainer

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(not os.path.isdir(FASHION_DIR),
                                   reason="apt-get install -y dataset-fashion-mnist")


def make_trainer(out_dir, lr=0.1, momentum=0.9, overrides=None, eval_every=10,
                 checkpoint_every=1000):
    md.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    model = mlp(in_features=12, hidden=(8,), num_classes=4, bn=False, init_std=0.3)
    opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, seed=0)
    test = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=32)
    return Trainer(model, opt, loader, eval_loader=test, eval_every=eval_every,
                   checkpoint_every=checkpoint_every, out_dir=out_dir, progress=False,
                   resume_overrides=overrides)


def interrupt_at(trainer, step):
    original = trainer.train_step

    def train_step():
        loss = original()
        if trainer.step == step - 1:  # this step finishes, then the run stops
            os.kill(os.getpid(), signal.SIGINT)
        return loss
    trainer.train_step = train_step


def rows(path):
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        row.pop("train_seconds")
        out.append(row)
    return out


@pytest.mark.parametrize("stop_at", [7, 13, 20])
def test_train_loss_after_resume_averages_the_whole_window(tmp_path, stop_at):
    full = make_trainer(tmp_path / "full")
    full.fit(30)
    first = make_trainer(tmp_path / "split")
    interrupt_at(first, stop_at)
    assert first.fit(30)["interrupted"] and first.step == stop_at
    resumed = make_trainer(tmp_path / "split")
    resumed.fit(30, resume=True)
    expected = rows(tmp_path / "full" / "metrics.jsonl")
    assert [r["step"] for r in expected] == [10, 20, 30]
    # Every logged number, train_loss included, equals the uninterrupted run's exactly.
    assert rows(tmp_path / "split" / "metrics.jsonl") == expected


def test_resume_keeps_the_checkpoints_options_unless_given(tmp_path, capsys):
    make_trainer(tmp_path, lr=0.1, momentum=0.9).fit(5)
    # constructed with other values but no overrides: the checkpoint's are kept
    t = make_trainer(tmp_path, lr=0.5, momentum=0.0)
    t.fit(8, resume=True)
    assert capsys.readouterr().out == ""
    assert t.optimizer.param_groups[0]["lr"] == 0.1
    assert t.optimizer.param_groups[0]["momentum"] == 0.9


def test_resume_applies_given_options_and_says_so(tmp_path, capsys):
    make_trainer(tmp_path, lr=0.1).fit(5)
    t = make_trainer(tmp_path, lr=0.02, overrides={"lr": 0.02, "momentum": 0.9})
    t.fit(8, resume=True)
    out = capsys.readouterr().out
    assert "resuming at step 5 with lr 0.02 (the checkpoint had 0.1)" in out
    assert "momentum" not in out  # unchanged: nothing to say
    assert t.optimizer.param_groups[0]["lr"] == 0.02
    saved = md.load(tmp_path / "checkpoint.npz")["optimizer"]["param_groups"][0]
    assert saved["lr"] == 0.02  # the new rate is what later resumes continue with
    with pytest.raises(ValueError, match="not an option of SGD"):
        make_trainer(tmp_path, overrides={"betas": (0.9, 0.99)})


@needs_fashion
def test_cli_resume_with_a_new_lr(tmp_path, capsys):
    from minidl.cli import main
    out = tmp_path / "run"
    base = ["train", "--dataset", "fashion-mnist", "--out", str(out), "--no-progress",
            "--eval-every", "2", "--bn-stats-batches", "1"]
    assert main(base + ["--steps", "2", "--lr", "0.05"]) == 0
    assert main(base + ["--steps", "4", "--resume", "--lr", "0.02"]) == 0
    assert "with lr 0.02 (the checkpoint had 0.05)" in capsys.readouterr().out
    lr = md.load(out / "checkpoint.npz")["optimizer"]["param_groups"][0]["lr"]
    assert lr == 0.02
    assert main(base + ["--steps", "6", "--resume"]) == 0  # no --lr: the checkpoint's
    assert "resuming" not in capsys.readouterr().out
    assert md.load(out / "checkpoint.npz")["optimizer"]["param_groups"][0]["lr"] == 0.02

"""`minidl ablation`: outputs and their sanity on tiny runs (not timing), divergence as a
result, the learning-rate search, resume, and clear errors."""
import csv
import json
import os

import pytest

from minidl.cli import main

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(not os.path.isdir(FASHION_DIR),
                                   reason="apt-get install -y dataset-fashion-mnist")

TINY = ["ablation", "--dataset", "fashion-mnist", "--steps", "6", "--eval-every", "3",
        "--width", "0.25", "--eval-examples", "64", "--final-examples", "64",
        "--bn-stats-batches", "2", "--jobs", "1", "--no-progress"]


def table_rows(out):
    lines = (out / "ablation.md").read_text().splitlines()
    return [line for line in lines if line.startswith("| ") and not line.startswith("| variant")]


@pytest.mark.slow
@needs_fashion
def test_tiny_ablation_writes_every_output_and_resumes(tmp_path, capsys):
    out = tmp_path / "abl"
    args = TINY + ["--seeds", "2", "--base-lr", "0.02",
                   "--variants", "inception,bn-x5,inception-sigmoid", "--out", str(out)]
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "ablation.csv")))
    assert [r["variant"] for r in rows] == ["inception", "bn-x5", "inception-sigmoid"]
    by = {r["variant"]: r for r in rows}
    assert float(by["bn-x5"]["lr"]) == pytest.approx(0.1)       # 5x the base rate
    for r in rows:
        assert r["seeds"] == "2"
        for q in ("median", "min", "max"):
            assert 0 <= float(r[f"best_acc_{q}"]) <= 1
            assert 0 <= float(r[f"final_acc_{q}"]) <= 1
    assert by["bn-x5"]["final_acc_population_median"] != ""     # Algorithm 2 for BN only
    assert by["inception"]["final_acc_population_median"] == ""
    assert len(table_rows(out)) == 3
    curves = list(csv.DictReader(open(out / "curves.csv")))
    assert {(c["variant"], c["seed"], c["step"]) for c in curves} == {
        (v, s, st) for v in by for s in ("0", "1") for st in ("3", "6")}
    for c in curves:
        p = [float(c[f"preact_p{q}"]) for q in (15, 50, 85)]
        assert p[0] <= p[1] <= p[2]
    result = json.loads((out / "bn-x5" / "seed-1" / "result.json").read_text())
    assert result["seed"] == 1 and result["bn"] and result["steps"] == 6
    assert result["weight_decay"] == pytest.approx(5e-4 / 5)     # the paper's L2 / 5
    assert (out / "ablation.png").stat().st_size > 10000
    assert (out / "activations.png").stat().st_size > 10000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["seeds"] == 2 and summary["lr_search"] is None

    # the finished runs are not overwritten by mistake
    assert main(args) == 1
    assert "holds an earlier run; pass --resume" in capsys.readouterr().err
    # --resume keeps finished runs as they are (nothing retrained)
    stamp = (out / "bn-x5" / "seed-1" / "result.json").stat().st_mtime_ns
    assert main(args + ["--resume"]) == 0
    assert (out / "bn-x5" / "seed-1" / "result.json").stat().st_mtime_ns == stamp
    assert list(csv.DictReader(open(out / "ablation.csv"))) == rows


@pytest.mark.slow
@needs_fashion
def test_divergence_is_a_result_and_the_search_picks_a_rate(tmp_path, capsys):
    out = tmp_path / "abl"
    assert main(TINY + ["--seeds", "1", "--lr-grid", "0.02,1e5", "--variants", "inception",
                        "--out", str(out)]) == 0
    search = (out / "lr_search.md").read_text()
    assert "| 0.02 (chosen) |" in search       # 1e5 diverges and cannot be chosen
    assert "| 100000 |" in search
    diverged = json.loads((out / "lr-search" / "lr-100000" / "result.json").read_text())
    assert diverged["diverged_at"] is not None and diverged["final_test_acc"] is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["base_lr"] == 0.02
    # the chosen search run is the plain network's seed 0, not trained twice
    assert not (out / "inception" / "seed-0").exists()

    out2 = tmp_path / "div"
    assert main(TINY + ["--seeds", "1", "--base-lr", "1e5", "--variants", "inception",
                        "--out", str(out2)]) == 0
    row = list(csv.DictReader(open(out2 / "ablation.csv")))[0]
    assert row["diverged"] == "1"


@pytest.mark.slow
@needs_fashion
def test_every_variant_runs_by_default(tmp_path):
    out = tmp_path / "all"
    assert main(TINY + ["--steps", "2", "--eval-every", "2", "--seeds", "1",
                        "--out", str(out)]) == 0
    rows = {r["variant"]: r for r in csv.DictReader(open(out / "ablation.csv"))}
    assert list(rows) == ["inception", "bn-baseline", "bn-x5", "bn-x30", "bn-x5-sigmoid",
                          "inception-sigmoid", "inception-x5"]
    for r in rows.values():
        assert 0 <= float(r["best_acc_median"]) <= 1


@pytest.mark.slow
@needs_fashion
def test_quick_ablation_learns(tmp_path):
    """The --quick preset (150 steps) on the two variants whose outcome is clear that
    early (all seven run in the test above): BN-x5 learns, the plain sigmoid network
    does not leave chance."""
    out = tmp_path / "quick"
    assert main(["ablation", "--quick", "--variants", "bn-x5,inception-sigmoid",
                 "--out", str(out), "--no-progress"]) == 0
    rows = {r["variant"]: r for r in csv.DictReader(open(out / "ablation.csv"))}
    assert list(rows) == ["bn-x5", "inception-sigmoid"]
    assert float(rows["bn-x5"]["best_acc_median"]) > 0.5
    assert float(rows["inception-sigmoid"]["best_acc_median"]) < 0.2
    assert (out / "ablation.png").exists()


@pytest.mark.parametrize("extra,message", [
    (["--variants", "inception,bogus"], "unknown variant"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--lr-grid", "0.1,-1"], "positive rates")])
def test_bad_arguments_give_one_clear_line(tmp_path, extra, message, capsys):
    assert main(TINY + ["--out", str(tmp_path / "x")] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # refused before anything was written


@pytest.mark.slow
@needs_fashion
def test_channels_last_and_contiguous_runs_train_alike(tmp_path):
    """The default channels_last layout changes where the values lie, not what they are:
    the same run in both formats logs the same losses (to float32 rounding)."""
    losses = {}
    for fmt in ("channels_last", "contiguous"):
        out = tmp_path / fmt
        assert main(TINY + ["--seeds", "1", "--base-lr", "0.02", "--variants", "bn-x5",
                            "--memory-format", fmt, "--out", str(out)]) == 0
        result = json.loads((out / "bn-x5" / "seed-0" / "result.json").read_text())
        losses[fmt] = [h["train_loss"] for h in result["history"] if "train_loss" in h]
    assert len(losses["contiguous"]) >= 2
    assert losses["channels_last"] == pytest.approx(losses["contiguous"], rel=1e-4)

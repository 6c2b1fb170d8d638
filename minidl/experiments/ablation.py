"""The Inception experiment of the Batch Normalization paper (section 4.2), scaled down.

BN-Inception-lite (`minidl.models.bn_inception_lite`) is trained in the paper's variants
on the same mini-batches (per seed), and the paper's table is rebuilt: per variant the
steps to reach the plain network's best accuracy, the best accuracy and the wall time,
as the median and range over seeds.

    inception          no BN, at the best learning rate of a search (the search is reported)
    bn-baseline        BN added, same learning rate
    bn-x5, bn-x30      BN, learning rate x5 and x30
    bn-x5-sigmoid      BN, sigmoid instead of ReLU, learning rate x5
    inception-sigmoid  no BN, sigmoid, the plain network's rate (the paper: stays at chance)
    inception-x5       no BN at BN-x5's rate (what happens to the plain network there)

Protocol (the same for every variant, except where the paper changes it for BN):
SGD with momentum 0.9, batch 32, the training set reshuffled every epoch, the learning
rate decayed exponentially per step (halved over the run for the plain network, 6x
faster for the BN networks: the paper's "accelerate the learning rate decay"), L2
weight decay `--weight-decay` for the plain network and a fifth of it with BN, no
dropout. Test accuracy every `--eval-every` steps on the first `--eval-examples` test
images (BN with its running statistics), and at the end on the whole test set with the
running statistics and with recomputed population statistics (the paper's Algorithm 2).

Outputs in --out: ablation.md and ablation.csv (the table), curves.csv (every
evaluation), lr_search.md, ablation.png (test accuracy, median line and band over
seeds) and activations.png (15/50/85th percentiles of one unit's pre-activation in the
last Inception module, with and without BN), summary.json, and one folder per run
(variant/seed-K: metrics.jsonl, checkpoint.npz, result.json). `--resume` continues:
finished runs are kept, interrupted ones continue from their checkpoints.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .figure1 import first_step_reaching, median_range

PERCENTILES = (15, 50, 85)
BN_DECAY_SPEEDUP = 6      # the paper: "accelerate the learning rate decay" 6x
BN_WEIGHT_DECAY_DIVISOR = 5  # the paper: "reduce the L2 weight regularization" 5x


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    bn: bool
    activation: str
    lr_mult: float


VARIANTS = (
    Variant("inception", "Inception", False, "relu", 1),
    Variant("bn-baseline", "BN-Baseline", True, "relu", 1),
    Variant("bn-x5", "BN-x5", True, "relu", 5),
    Variant("bn-x30", "BN-x30", True, "relu", 30),
    Variant("bn-x5-sigmoid", "BN-x5-Sigmoid", True, "sigmoid", 5),
    Variant("inception-sigmoid", "Inception-Sigmoid (no BN)", False, "sigmoid", 1),
    Variant("inception-x5", "Inception at BN-x5's rate (no BN)", False, "relu", 5),
)
BY_KEY = {v.key: v for v in VARIANTS}
DATASETS = ("fashion-mnist", "mnist", "cifar10")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    p.add_argument("--data-root", default=None, help="directory holding the dataset files")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (median and range)")
    p.add_argument("--steps", type=int, default=6000, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=32, help="the paper's 32")
    p.add_argument("--base-lr", type=float, default=None,
                   help="the plain network's learning rate; without it, the best of "
                        "--lr-grid is searched for (seed 0, full length)")
    p.add_argument("--lr-grid", default="0.005,0.01,0.02,0.04",
                   help="learning rates tried for the plain network")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4,
                   help="L2 for the plain network; BN networks use a fifth of it")
    p.add_argument("--lr-decay", type=float, default=0.5,
                   help="factor the plain network's rate decays by over the run (BN: "
                        "6x faster, i.e. this to the 6th power)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between evaluations (default: steps / 20)")
    p.add_argument("--eval-examples", type=int, default=2000,
                   help="test images of each periodic evaluation (the end uses all)")
    p.add_argument("--final-examples", type=int, default=None,
                   help="test images of the final evaluation (default: the whole test set)")
    p.add_argument("--bn-stats-batches", type=int, default=50,
                   help="training batches for the population statistics at the end")
    p.add_argument("--variants", default=",".join(v.key for v in VARIANTS),
                   help="comma-separated subset of: " + ", ".join(BY_KEY))
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of the model")
    p.add_argument("--memory-format", choices=("channels_last", "contiguous"),
                   default="channels_last",
                   help="layout of the model's activations (default channels_last: the "
                        "NHWC kernels, no conversions; the values are the same)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, each on cores/jobs threads (default: one per "
                        "core; small CNNs use 2 cores better as 2 runs than as 2 threads)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between checkpoints (default: each evaluation)")
    p.add_argument("--quick", action="store_true",
                   help="every variant, 1 seed, 150 steps, base lr 0.02, evaluation on 500 "
                        "(final: 2000) test images: a smoke run of a few minutes")
    p.add_argument("--resume", action="store_true", help="continue the runs in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds an earlier ablation")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--sync-bn", action="store_true",
                   help="under mpirun -n K: BN statistics over the global batch "
                        "(SyncBatchNorm) instead of each rank's share of it")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the runs train (cuda: one run at a time on the GPU)")


# ---------------------------------------------------------------- one training run

def _load_dataset(dataset: str, root, train: bool):
    from .. import data
    if dataset == "cifar10":
        ds = data.cifar10(root=root, train=train)
    elif dataset == "mnist":
        ds = data.mnist(root=root, train=train)
    else:
        ds = data.fashion_mnist(root=root, train=train)
    x, y = ds.arrays
    x = x.reshape(len(x), -1, x.shape[-2], x.shape[-1]) if x.ndim == 3 else x
    return np.ascontiguousarray(x, dtype=np.float32), y


def _lr_lambda(decay: float, steps: int, speedup: float):
    """Per-step exponential decay: decay**(speedup * t / steps)."""
    rate = math.log(decay) * speedup / max(steps, 1)
    return lambda t: math.exp(rate * t)


def train_one(spec: dict) -> dict:
    """Train one (variant, seed) run described by `spec` (plain data, so it can cross a
    process boundary); returns its result dict, also written to result.json."""
    from .. import optim
    from ..data import DataLoader, TensorDataset
    from ..distributed.launch import data_parallel, local_main_first, on_main
    from ..models import bn_inception_lite
    from ..models.inception import last_inception_preactivation
    from ..random import manual_seed
    from ..train import ActivationRecorder, DivergenceError, Trainer, accuracy_and_loss
    from ..train.bn_stats import population_statistics

    out = Path(spec["out_dir"])
    result_path = out / "result.json"

    def finished():  # rank 0 reads the folder; under mpirun every rank gets its answer
        out.mkdir(parents=True, exist_ok=True)
        if spec["resume"] and result_path.exists():
            return json.loads(result_path.read_text())
    done = on_main(finished)
    from ..distributed.group import current_group
    if current_group().size > 1:
        done = current_group().bcast_object(done, 0, "broadcast of a finished run's result")
    if done is not None:
        return done

    v = BY_KEY[spec["variant"]]
    (xtr, ytr), (xte, yte) = local_main_first(lambda: [
        _load_dataset(spec["dataset"], spec["data_root"], t) for t in (True, False)])
    manual_seed(spec["seed"])
    model = bn_inception_lite(num_classes=int(ytr.max()) + 1, in_channels=xtr.shape[1],
                              bn=v.bn, activation=v.activation, width=spec["width"])
    device = spec.get("device", "cpu")
    model.to(device)  # before the optimizer
    if spec.get("memory_format", "channels_last") == "channels_last" and device == "cpu":
        # Channels-last weights make every convolution's output channels-last, from the
        # first layer on: the whole network then runs the NHWC kernels.
        from ..layout import channels_last
        model.to(memory_format=channels_last)
    wd = spec["weight_decay"] / (BN_WEIGHT_DECAY_DIVISOR if v.bn else 1)
    optimizer = optim.SGD(model.parameters(), lr=spec["lr"], momentum=spec["momentum"],
                          weight_decay=wd)
    scheduler = optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(spec["lr_decay"], spec["steps"],
                              BN_DECAY_SPEEDUP if v.bn else 1))
    recorded = last_inception_preactivation(model)
    # The same seed gives every variant the same sequence of mini-batches. Under mpirun
    # -n K: DistributedDataParallel, and this rank's share of each global batch.
    model, train_loader = data_parallel(model, TensorDataset(xtr, ytr), spec["batch_size"],
                                        spec["seed"], spec.get("sync_bn", False), "ablation")
    n_eval = min(spec["eval_examples"], len(xte))
    eval_loader = DataLoader(TensorDataset(xte[:n_eval], yte[:n_eval]), batch_size=500)
    recorder = ActivationRecorder(recorded, unit=0,
                                  percentiles=PERCENTILES, name="preact")
    trainer = Trainer(model, optimizer, train_loader, eval_loader=eval_loader,
                      eval_every=spec["eval_every"], checkpoint_every=spec["checkpoint_every"],
                      out_dir=out, recorders=[recorder], scheduler=scheduler,
                      progress=spec["progress"], progress_position=spec.get("position"),
                      name=f"{v.key} seed {spec['seed']}", device=device)
    result = {"variant": v.key, "label": v.label, "seed": spec["seed"], "lr": spec["lr"],
              "weight_decay": wd, "bn": v.bn, "activation": v.activation,
              "diverged_at": None, "interrupted": False}
    t0 = time.perf_counter()
    try:
        fit = trainer.fit(spec["steps"], resume=spec["resume"])
    except DivergenceError as e:
        # A result, not a crash: the paper's plain network at high rates is expected
        # to do this. The last good checkpoint is kept as it was.
        result.update(diverged_at=e.step, history=trainer.history, steps=e.step,
                      train_seconds=trainer.train_seconds, final_test_acc=None,
                      final_test_acc_population=None,
                      wall_seconds=time.perf_counter() - t0)
        _write_result(result_path, result)
        return result
    if fit["interrupted"]:
        result.update(interrupted=True, history=fit["history"])
        return result
    # Final evaluation on the whole test set: running statistics, and (BN only) the
    # paper's Algorithm 2 population statistics over training batches.
    n_final = len(xte) if spec["final_examples"] is None else min(spec["final_examples"],
                                                                    len(xte))
    test_loader = DataLoader(TensorDataset(xte[:n_final], yte[:n_final]), batch_size=500)
    acc_running, _ = accuracy_and_loss(model, test_loader, device=device)
    acc_pop = None
    if v.bn:
        stats_loader = DataLoader(TensorDataset(xtr, ytr), batch_size=spec["batch_size"],
                                  shuffle=True, seed=spec["seed"] + 1)
        batches = (xb.to(device) for _, (xb, _) in zip(range(spec["bn_stats_batches"]),
                                                       stats_loader))
        with population_statistics(model, batches):
            acc_pop, _ = accuracy_and_loss(model, test_loader, device=device)
    result.update(history=fit["history"], steps=fit["steps"],
                  train_seconds=fit["train_seconds"], steps_per_second=fit["steps_per_second"],
                  final_test_acc=acc_running, final_test_acc_population=acc_pop,
                  wall_seconds=time.perf_counter() - t0)
    _write_result(result_path, result)
    return result


def _write_result(path: Path, result: dict) -> None:
    from .._atomic import atomic_write
    from ..distributed.launch import is_main
    if not is_main():
        return
    with atomic_write(path, mode="w") as (f, _):
        json.dump(result, f)


# ------------------------------------------------------------------ running many

def _worker_init(threads: int, counter, lock) -> None:
    from ..backend import set_num_threads
    set_num_threads(threads)
    global _POSITION
    with lock:
        _POSITION = counter.value
        counter.value += 1


_POSITION = None


def _train_in_worker(spec: dict) -> dict:
    spec = dict(spec, position=_POSITION)
    return train_one(spec)


def run_all(specs: list, jobs: int) -> list:
    """Train every spec, `jobs` at a time, each job with cores // jobs Numba and BLAS
    threads. Returns the results in the order of `specs`."""
    if jobs <= 1 or len(specs) <= 1:
        return [train_one(s) for s in specs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    cores = os.cpu_count() or 1
    threads = max(1, cores // jobs)
    ctx = mp.get_context("spawn")
    counter, lock = ctx.Value("i", 0), ctx.Lock()
    env_keys = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in env_keys}
    os.environ.update({k: str(threads) for k in env_keys})  # inherited by the workers
    try:
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                 initargs=(threads, counter, lock)) as pool:
            return list(pool.map(_train_in_worker, specs))
    finally:
        for k, val in saved.items():
            if val is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = val


# ------------------------------------------------------------------------ reporting

def best_acc(result: dict) -> float:
    accs = [r["test_acc"] for r in result.get("history", []) if "test_acc" in r]
    return max(accs) if accs else float("nan")


def summarize(results: dict, target: float) -> list:
    """One row per variant: steps to `target`, best and final accuracy, wall time."""
    rows = []
    for key, runs in results.items():
        v = BY_KEY[key]
        steps_to = [first_step_reaching(r.get("history", []), target) for r in runs]
        rows.append({
            "variant": key, "label": v.label, "lr": runs[0]["lr"], "seeds": len(runs),
            "steps_to_target": median_range(steps_to),
            "reached_target": sum(s is not None for s in steps_to),
            "best_acc": median_range([best_acc(r) for r in runs]),
            "final_acc": median_range([r.get("final_test_acc") for r in runs]),
            "final_acc_population": median_range(
                [r.get("final_test_acc_population") for r in runs]),
            "diverged": sum(r.get("diverged_at") is not None for r in runs),
            "train_seconds": median_range([r.get("train_seconds") for r in runs]),
        })
    return rows


def _fmt(mr: dict, pct=False, digits=0) -> str:
    if mr["median"] is None:
        return "-"
    f = (lambda x: f"{100 * x:.2f}%") if pct else (lambda x: f"{x:,.{digits}f}")
    if mr["n"] == 1 or mr["min"] == mr["max"]:
        return f(mr["median"])
    return f"{f(mr['median'])} ({f(mr['min'])}-{f(mr['max'])})"


def format_table(rows: list, target: float, meta: dict) -> str:
    lines = [f"BN-Inception-lite ablation on {meta['dataset']}: {meta['steps']} steps of "
             f"{meta['batch_size']}, {meta['seeds']} seed(s), plain lr {meta['base_lr']}; "
             f"median (range) over seeds", "",
             f"Target: the plain Inception's best accuracy, {100 * target:.2f}% (median "
             f"over seeds of its best periodic evaluation on {meta['eval_examples']} test "
             f"images).", "",
             "| variant | lr | steps to target | reached | best acc (periodic) | final acc, "
             "running stats | final acc, population stats | diverged | train time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['lr']:g} | {_fmt(r['steps_to_target'])} | "
            f"{r['reached_target']}/{r['seeds']} | {_fmt(r['best_acc'], pct=True)} | "
            f"{_fmt(r['final_acc'], pct=True)} | {_fmt(r['final_acc_population'], pct=True)} "
            f"| {r['diverged']}/{r['seeds']} | {_fmt(r['train_seconds'], digits=0)} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list, path: Path) -> None:
    cols = ["variant", "lr", "seeds", "reached_target", "diverged"]
    stats = ["steps_to_target", "best_acc", "final_acc", "final_acc_population",
             "train_seconds"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + [f"{s}_{q}" for s in stats for q in ("median", "min", "max")])
        for r in rows:
            w.writerow([r[c] for c in cols] +
                       [r[s][q] for s in stats for q in ("median", "min", "max")])


def write_curves(results: dict, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "seed", "step", "test_acc", "train_loss"] +
                   [f"preact_p{q}" for q in PERCENTILES])
        for key, runs in results.items():
            for r in runs:
                for row in r.get("history", []):
                    w.writerow([key, r["seed"], row["step"], row.get("test_acc"),
                                row.get("train_loss")] +
                               [row.get(f"preact_p{q}") for q in PERCENTILES])


def _curves(runs: list, field: str):
    """(steps, values (seeds x steps)) over the steps every run evaluated (a diverged
    run stops early: its curve ends there)."""
    by_seed = [{row["step"]: row.get(field) for row in r.get("history", [])} for r in runs]
    steps = sorted(set().union(*by_seed)) if by_seed else []
    vals = np.array([[h.get(s, np.nan) if h.get(s) is not None else np.nan for s in steps]
                     for h in by_seed], dtype=float)
    return np.array(steps), vals


def plot(results: dict, out: Path, title: str, target: float) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, (key, runs) in enumerate(results.items()):
        steps, vals = _curves(runs, "test_acc")
        if not len(steps):
            continue
        with np.errstate(all="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(vals, axis=0)
                lo, hi = np.nanmin(vals, axis=0), np.nanmax(vals, axis=0)
        ax.plot(steps, med, color=f"C{i}", label=BY_KEY[key].label)
        ax.fill_between(steps, lo, hi, color=f"C{i}", alpha=0.2)
    ax.axhline(target, color="gray", ls="--", lw=0.8, label="plain network's best")
    ax.set(xlabel="training step", ylabel="test accuracy", title=title, ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=110)
    plt.close(fig)

    pairs = [k for k in ("inception", "bn-baseline") if k in results]
    if pairs:
        fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 3.8), sharey=True)
        axes = np.atleast_1d(axes)
        for ax, key in zip(axes, pairs):
            runs = results[key][:1]  # the first seed
            for q in PERCENTILES:
                steps, vals = _curves(runs, f"preact_p{q}")
                ax.plot(steps, vals[0], color="C0" if q == 50 else "C1",
                        lw=1.5 if q == 50 else 1, label=f"{q}th percentile")
            ax.set(title=f"{BY_KEY[key].label}: pre-activation of one unit, last "
                   f"Inception module", xlabel="training step")
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "activations.png", dpi=110)
        plt.close(fig)
    return True


# --------------------------------------------------------------------------- main

def _specs(variant_keys, seeds, lr_of, args, out: Path, progress: bool) -> list:
    specs = []
    for key in variant_keys:
        for seed in seeds:
            specs.append({
                "variant": key, "seed": seed, "lr": lr_of(key),
                "out_dir": str(out / key / f"seed-{seed}"), "dataset": args.dataset,
                "data_root": args.data_root, "steps": args.steps,
                "batch_size": args.batch_size, "momentum": args.momentum,
                "weight_decay": args.weight_decay, "lr_decay": args.lr_decay,
                "eval_every": args.eval_every, "eval_examples": args.eval_examples,
                "final_examples": args.final_examples,
                "checkpoint_every": args.checkpoint_every,
                "bn_stats_batches": args.bn_stats_batches, "width": args.width,
                "memory_format": args.memory_format,
                "sync_bn": getattr(args, "sync_bn", False),
                "resume": args.resume, "progress": progress,
                "device": getattr(args, "device", "cpu")})
    return specs


def _parse_variants(text: str) -> list:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in keys if k not in BY_KEY]
    if bad or not keys:
        raise UsageError(f"minidl ablation: unknown variant(s) {bad or text!r}; choose from "
                         f"{', '.join(BY_KEY)}")
    return keys


def _parse_lr_grid(text: str) -> list:
    try:
        grid = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        grid = []
    if not grid or not all(0 < lr < math.inf for lr in grid):
        raise UsageError(f"minidl ablation: --lr-grid needs positive rates separated by "
                         f"commas, got {text!r}")
    return grid


def _lr_search(args, out: Path, jobs: int, progress: bool):
    grid = _parse_lr_grid(args.lr_grid)
    specs = []
    for lr in grid:
        s = _specs(["inception"], [0], lambda k, lr=lr: lr, args, out, progress)[0]
        s["out_dir"] = str(out / "lr-search" / f"lr-{lr:g}")
        specs.append(s)
    results = run_all(specs, jobs)
    if any(r["interrupted"] for r in results):
        return None, results
    rows = [(lr, best_acc(r), r.get("final_test_acc"), r.get("diverged_at"))
            for lr, r in zip(grid, results)]
    finite = [(b, lr) for lr, b, _, d in rows if not math.isnan(b)]
    best = max(finite)[1] if finite else grid[0]
    lines = ["Learning-rate search for the plain Inception network (seed 0, full length)",
             "", "| lr | best periodic acc | final test acc | diverged at |", "|---|---|---|---|"]
    for lr, b, f, d in rows:
        lines.append(f"| {lr:g}{' (chosen)' if lr == best else ''} | "
                     f"{'-' if math.isnan(b) else f'{100 * b:.2f}%'} | "
                     f"{'-' if f is None else f'{100 * f:.2f}%'} | {d if d else '-'} |")
    from ..distributed.launch import is_main
    if is_main():
        (out / "lr_search.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    return best, results


def run(args) -> dict:
    if args.quick:
        args.seeds = 1
        args.steps = min(args.steps, 150)
        args.eval_examples = min(args.eval_examples, 500)
        args.eval_every = args.eval_every or max(1, args.steps // 5)
        args.final_examples = args.final_examples or 2000
        args.bn_stats_batches = min(args.bn_stats_batches, 20)
        if args.base_lr is None:
            args.base_lr = 0.02
    for name in ("seeds", "steps", "batch_size", "eval_examples", "final_examples",
                 "eval_every", "jobs", "bn_stats_batches"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"minidl ablation: --{name.replace('_', '-')} must be >= 1, "
                             f"got {getattr(args, name)}")
    for name in ("base_lr", "momentum", "weight_decay", "lr_decay", "width"):
        value = getattr(args, name)
        if value is not None and not (0 <= value < math.inf):
            raise UsageError(f"minidl ablation: --{name.replace('_', '-')} must be a finite "
                             f"number >= 0, got {value}")
    if not args.width > 0:
        raise UsageError(f"minidl ablation: --width must be > 0, got {args.width}")
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        raise UsageError(f"minidl ablation: --checkpoint-every must be >= 0, got "
                         f"{args.checkpoint_every}")
    if args.base_lr is None:
        _parse_lr_grid(args.lr_grid)
    if args.eval_every is None:
        args.eval_every = max(1, args.steps // 20)
    if args.checkpoint_every is None:
        args.checkpoint_every = args.eval_every
    keys = _parse_variants(args.variants)
    jobs = args.jobs or (os.cpu_count() or 1)
    if getattr(args, "device", "cpu") == "cuda":
        from .figure1 import check_device
        check_device(args, "ablation")
        jobs = 1  # one GPU, and CUDA contexts do not survive a fork: runs take turns
    from ..distributed.launch import on_main, world
    if world() > 1:
        jobs = 1  # under mpirun each run is data-parallel over the ranks, one at a time
    progress = not args.no_progress
    from .run_dir import claim
    lock = on_main(lambda: claim(args.out, args.resume, args.overwrite, "ablation"))
    try:
        return _run(args, keys, jobs, progress)
    finally:
        if lock is not None:
            lock.release()


def _run(args, keys, jobs, progress) -> dict:
    out = Path(args.out)
    t0 = time.perf_counter()

    search_results = None
    from ..distributed.launch import is_main
    if args.base_lr is None:
        args.base_lr, search_results = _lr_search(args, out, jobs, progress)
        if args.base_lr is None:
            if is_main():
                print(f"\ninterrupted: continue with --resume (runs in {out})")
            return {"interrupted": True}
    base = args.base_lr
    specs = _specs(keys, range(args.seeds), lambda k: base * BY_KEY[k].lr_mult, args, out,
                   progress)
    if search_results is not None:  # the chosen search run is the plain network's seed 0
        chosen = out / "lr-search" / f"lr-{base:g}"
        for s in specs:
            if s["variant"] == "inception" and s["seed"] == 0:
                s["out_dir"] = str(chosen)
    flat = run_all(specs, jobs)
    if any(r["interrupted"] for r in flat):
        if is_main():
            print(f"\ninterrupted: checkpoints saved; continue with --resume (runs in "
                  f"{out})")
        return {"interrupted": True}
    results = {}
    for s, r in zip(specs, flat):
        results.setdefault(s["variant"], []).append(r)
    wall = time.perf_counter() - t0

    ref = results.get("inception")
    target = (float(np.median([best_acc(r) for r in ref])) if ref else float("nan"))
    rows = summarize(results, target)
    dataset_note = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST",
                    "cifar10": "CIFAR-10"}[args.dataset]
    meta = {"dataset": dataset_note, "steps": args.steps, "batch_size": args.batch_size,
            "seeds": args.seeds, "base_lr": base, "eval_examples": args.eval_examples,
            "momentum": args.momentum, "weight_decay": args.weight_decay,
            "lr_decay": args.lr_decay, "width": args.width, "jobs": jobs}
    table = format_table(rows, target, meta)
    table += f"\nWall time of the whole experiment: {wall:.0f} s ({jobs} run(s) at a time).\n"
    if not is_main():  # rank 0 writes and prints the results
        return {"meta": meta, "target_acc": target, "rows": rows, "wall_seconds": wall}
    (out / "ablation.md").write_text(table)
    write_csv(rows, out / "ablation.csv")
    write_curves(results, out / "curves.csv")
    drew = plot(results, out, f"BN-Inception-lite on {dataset_note}: {args.steps} steps of "
                f"{args.batch_size}, {args.seeds} seed(s)", target)
    summary = {"meta": meta, "target_acc": target, "rows": rows, "wall_seconds": wall,
               "lr_search": None if search_results is None else [
                   {"lr": r["lr"], "best_acc": best_acc(r),
                    "final_test_acc": r.get("final_test_acc"),
                    "diverged_at": r.get("diverged_at")} for r in search_results],
               "variants": {k: asdict(BY_KEY[k]) for k in results}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table)
    print(f"wrote {out / 'ablation.md'}, ablation.csv, curves.csv" +
          (", ablation.png, activations.png" if drew else " (no plots: pip install matplotlib)"))
    return summary

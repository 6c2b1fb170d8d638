"""Figure 1 of the Batch Normalization paper (section 4.1), end to end.

Two 784-100-100-100-10 sigmoid MLPs, without and with BN before each sigmoid, trained
on the same sequence of mini-batches. Every `eval_every` steps: test accuracy (panel a)
and the 15/50/85th percentiles of the input of one sigmoid in the last hidden layer
over the test set (panels b and c). Outputs in `out`: figure1.csv, figure1.png (with
matplotlib), summary.txt, summary.json, and one folder per network (metrics.jsonl,
checkpoint.npz, resumable).
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

PERCENTILES = (15, 50, 85)
DEFAULT_LR, DEFAULT_MOMENTUM = 0.01, 0.9
NETWORKS = (("nobn", False, "without BN"), ("bn", True, "with BN"))


def add_arguments(p: argparse.ArgumentParser, quick_flag: bool = True) -> None:
    """Options shared by `minidl figure1` and `minidl train`."""
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"],
                   help="mnist (downloaded if missing) or fashion-mnist (Debian's "
                        "dataset-fashion-mnist package, or downloaded)")
    p.add_argument("--data-root", default=None, help="directory holding the IDX files")
    p.add_argument("--steps", type=int, default=50000)
    p.add_argument("--batch-size", type=int, default=60)
    p.add_argument("--lr", type=float, default=None,
                   help=f"SGD learning rate (default {DEFAULT_LR}); given with --resume, it "
                        f"replaces the checkpoint's (and says so)")
    p.add_argument("--momentum", type=float, default=None,
                   help=f"SGD momentum (default {DEFAULT_MOMENTUM}); given with --resume, "
                        f"it replaces the checkpoint's (and says so)")
    p.add_argument("--init-std", type=float, default=0.01,
                   help="weights ~ N(0, std^2), biases 0 (default 0.01)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--checkpoint-every", type=int, default=5000)
    p.add_argument("--binarize", action="store_true",
                   help="binarize pixels at 0.5, as the paper did")
    p.add_argument("--bn-eval", default="running", choices=["running", "population"],
                   help="BN inference statistics: moving averages, or the paper's "
                        "Algorithm 2 population statistics over training batches")
    p.add_argument("--bn-stats-batches", type=int, default=50)
    p.add_argument("--unit", type=int, default=0,
                   help="which sigmoid of the last hidden layer to record")
    p.add_argument("--threads", type=int, default=None, help="Numba threads")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the networks train (cuda: needs numba-cuda and a GPU)")
    p.add_argument("--out", default="runs/figure1")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoints in --out (with the checkpoint's "
                        "learning rate and momentum, unless --lr / --momentum are given)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds an earlier run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--sync-bn", action="store_true",
                   help="under mpirun -n K: BN statistics over the global batch "
                        "(SyncBatchNorm) instead of each rank's share of it")
    if quick_flag:
        p.add_argument("--seeds", type=int, default=1,
                       help="repeat with seeds seed..seed+N-1 and report the median and "
                            "range over them (each seed in DIR/seed-K)")
        p.add_argument("--quick", action="store_true",
                       help="a short run (3,000 steps, evaluation every 250): under 2 min")


def load_data(dataset: str, root=None, binarize: bool = False):
    """Train and test sets as (N, 784) float32 arrays and int64 labels."""
    from .. import data
    loader = data.mnist if dataset == "mnist" else data.fashion_mnist
    out = []
    for train in (True, False):
        ds = loader(root=root, train=train)
        x, y = ds.arrays
        x = x.reshape(len(x), -1)
        if binarize:
            x = (x > 0.5).astype(np.float32)
        out.append((np.ascontiguousarray(x), y))
    return out


def make_trainer(bn: bool, args, train, test, out_dir: Path, name: str):
    """One network of the experiment with its optimizer, loaders and recorder."""
    from .. import nn, optim
    from ..data import DataLoader, TensorDataset
    from ..distributed.launch import data_parallel
    from ..models import mlp
    from ..random import manual_seed
    from ..train import ActivationRecorder, Trainer

    manual_seed(args.seed)
    model = mlp(bn=bn, init_std=args.init_std)
    device = getattr(args, "device", "cpu")
    model.to(device)  # before the optimizer, as in PyTorch
    # --lr / --momentum: None means "not given" (the default for a fresh run, the
    # checkpoint's value on --resume); given ones override a resumed checkpoint's.
    given = {k: getattr(args, k, None) for k in ("lr", "momentum")}
    given = {k: v for k, v in given.items() if v is not None}
    optimizer = optim.SGD(model.parameters(), lr=given.get("lr", DEFAULT_LR),
                          momentum=given.get("momentum", DEFAULT_MOMENTUM))
    # The same seed for both networks: they see the same sequence of mini-batches. Under
    # mpirun -n K: DistributedDataParallel, and this rank's share of each global batch.
    sigmoids = [m for m in model.modules() if isinstance(m, nn.Sigmoid)]
    model, train_loader = data_parallel(model, TensorDataset(*train), args.batch_size,
                                        args.seed, getattr(args, "sync_bn", False))
    test_loader = DataLoader(TensorDataset(*test), batch_size=2000)
    stats_loader = DataLoader(TensorDataset(*train), batch_size=args.batch_size, shuffle=True,
                              seed=args.seed + 1)
    recorder = ActivationRecorder(sigmoids[-1], unit=args.unit, percentiles=PERCENTILES,
                                  name="sigmoid_in")
    return Trainer(model, optimizer, train_loader, eval_loader=test_loader,
                   eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                   out_dir=out_dir, recorders=[recorder],
                   bn_eval=args.bn_eval if bn else "running",
                   bn_stats_loader=stats_loader if bn else None,
                   bn_stats_batches=args.bn_stats_batches,
                   progress=not args.no_progress, name=name, resume_overrides=given,
                   device=device)


def first_step_reaching(history, target: float):
    """The first evaluated step whose test accuracy is at least `target`, else None."""
    for row in history:
        if row.get("test_acc") is not None and row["test_acc"] >= target:
            return row["step"]
    return None


def median_range(values) -> dict:
    """{"median", "min", "max", "n"} of the values that are not None or NaN."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and v != v)]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": float(np.median(vals)), "min": float(min(vals)),
            "max": float(max(vals)), "n": len(vals)}


def summarize(results: dict, args, dataset_note: str) -> dict:
    nobn, bn = results["nobn"]["history"], results["bn"]["history"]
    target = nobn[-1]["test_acc"]
    summary = {
        "dataset": dataset_note,
        "protocol": {"steps": args.steps, "batch_size": args.batch_size,
                     "lr": results["bn"].get("lr", args.lr),
                     "momentum": results["bn"].get("momentum", args.momentum),
                     "init_std": args.init_std,
                     "seed": args.seed, "binarize": args.binarize,
                     "bn_eval": args.bn_eval},
        "networks": {},
        "bn_steps_to_nobn_final_acc": first_step_reaching(bn, target),
        "evaluations_bn_ahead": sum(b["test_acc"] > n["test_acc"] for b, n in zip(bn, nobn)),
        "evaluations": min(len(bn), len(nobn)),
    }
    for key, _, label in NETWORKS:
        hist, res = results[key]["history"], results[key]
        p = np.array([[row[f"sigmoid_in_p{q}"] for q in PERCENTILES] for row in hist])
        summary["networks"][key] = {
            "label": label,
            "final_test_acc": hist[-1]["test_acc"],
            "best_test_acc": max(r["test_acc"] for r in hist),
            "best_step": max(hist, key=lambda r: r["test_acc"])["step"],
            "bn_eval": hist[-1]["bn_eval"],
            # Drift of the recorded sigmoid input: how far its median and its 15-85
            # spread move between the first and the last evaluation.
            "sigmoid_in_median_first_last": [float(p[0, 1]), float(p[-1, 1])],
            "sigmoid_in_spread_first_last": [float(p[0, 2] - p[0, 0]),
                                             float(p[-1, 2] - p[-1, 0])],
            "train_seconds": res["train_seconds"],
            "steps_per_second": res["steps_per_second"],
        }
    return summary


def format_summary(s: dict) -> str:
    pr = s["protocol"]
    lines = [f"Figure 1 reproduction on {s['dataset']}",
             f"protocol: {pr['steps']} steps, batch {pr['batch_size']}, SGD lr {pr['lr']} "
             f"momentum {pr['momentum']}, init N(0, {pr['init_std']}^2), seed {pr['seed']}, "
             f"binarize {pr['binarize']}", ""]
    lines.append(f"{'network':<12}{'final acc':>10}{'best acc':>10}{'at step':>9}"
                 f"{'BN eval':>12}{'steps/s':>9}{'train s':>9}")
    for key, net in s["networks"].items():
        lines.append(f"{net['label']:<12}{net['final_test_acc']:>10.4f}"
                     f"{net['best_test_acc']:>10.4f}{net['best_step']:>9}"
                     f"{(net['bn_eval'] if key == 'bn' else '-'):>12}"
                     f"{net['steps_per_second']:>9.0f}{net['train_seconds']:>9.1f}")
    lines.append("")
    reach = s["bn_steps_to_nobn_final_acc"]
    lines.append("BN network first reaches the no-BN network's final accuracy at step "
                 f"{reach if reach is not None else 'never'}")
    lines.append(f"BN network ahead at {s['evaluations_bn_ahead']} of {s['evaluations']} "
                 f"evaluations")
    for net in s["networks"].values():
        m0, m1 = net["sigmoid_in_median_first_last"]
        w0, w1 = net["sigmoid_in_spread_first_last"]
        lines.append(f"sigmoid input {net['label']}: median {m0:+.3f} -> {m1:+.3f}, "
                     f"15-85 spread {w0:.3f} -> {w1:.3f}")
    return "\n".join(lines) + "\n"


def write_csv(results: dict, path: Path) -> None:
    nobn = {r["step"]: r for r in results["nobn"]["history"]}
    bn = {r["step"]: r for r in results["bn"]["history"]}
    cols = ["step", "nobn_test_acc", "bn_test_acc", "bn_eval"]
    cols += [f"{k}_sigmoid_in_p{q}" for k in ("nobn", "bn") for q in PERCENTILES]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for step in sorted(set(nobn) & set(bn)):
            a, b = nobn[step], bn[step]
            w.writerow([step, a["test_acc"], b["test_acc"], b["bn_eval"]]
                       + [a[f"sigmoid_in_p{q}"] for q in PERCENTILES]
                       + [b[f"sigmoid_in_p{q}"] for q in PERCENTILES])


def summarize_seeds(summaries: list) -> dict:
    """Median and range over seeds of what `summarize` reports per seed."""
    out = {"seeds": [s["protocol"]["seed"] for s in summaries], "networks": {},
           "bn_steps_to_nobn_final_acc": median_range(
               [s["bn_steps_to_nobn_final_acc"] for s in summaries]),
           "bn_never_reached": sum(s["bn_steps_to_nobn_final_acc"] is None for s in summaries)}
    for key, _, label in NETWORKS:
        nets = [s["networks"][key] for s in summaries]
        out["networks"][key] = {"label": label, **{
            f: median_range([n[f] for n in nets])
            for f in ("final_test_acc", "best_test_acc", "steps_per_second", "train_seconds")}}
    return out


def format_seeds(agg: dict, dataset: str) -> str:
    def mr(d, pct):
        f = (lambda x: f"{100 * x:.2f}%") if pct else (lambda x: f"{x:,.0f}")
        if d["median"] is None:
            return "never"
        return f"{f(d['median'])} ({f(d['min'])} - {f(d['max'])})"
    lines = [f"Figure 1 on {dataset}, {len(agg['seeds'])} seeds {agg['seeds']}: median "
             f"(range)", f"{'network':<12}{'final acc':>28}{'best acc':>28}{'steps/s':>22}"]
    for net in agg["networks"].values():
        lines.append(f"{net['label']:<12}{mr(net['final_test_acc'], True):>28}"
                     f"{mr(net['best_test_acc'], True):>28}"
                     f"{mr(net['steps_per_second'], False):>22}")
    lines.append(f"BN network first reaches the no-BN network's final accuracy at step "
                 f"{mr(agg['bn_steps_to_nobn_final_acc'], False)}; never in "
                 f"{agg['bn_never_reached']} of {len(agg['seeds'])} seeds")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path, title: str, bands: dict | None = None) -> bool:
    """The paper's three panels. Returns False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for i, (key, _, label) in enumerate(NETWORKS):
        if bands:  # several seeds: median line and min-max band over them
            steps, lo, med, hi = bands[key]
            axes[0].plot(steps, med, color=f"C{i}", label=f"{label} (median)")
            axes[0].fill_between(steps, lo, hi, color=f"C{i}", alpha=0.25)
            continue
        h = results[key]["history"]
        axes[0].plot([r["step"] for r in h], [r["test_acc"] for r in h], label=label)
    axes[0].set(title="(a) test accuracy", xlabel="training step", ylabel="accuracy")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    lo = min(min(r[f"sigmoid_in_p{q}"] for q in PERCENTILES for r in results[k]["history"])
             for k, _, _ in NETWORKS)
    hi = max(max(r[f"sigmoid_in_p{q}"] for q in PERCENTILES for r in results[k]["history"])
             for k, _, _ in NETWORKS)
    for ax, (key, _, label), letter in zip(axes[1:], NETWORKS, "bc"):
        h = results[key]["history"]
        steps = [r["step"] for r in h]
        for q in PERCENTILES:
            ax.plot(steps, [r[f"sigmoid_in_p{q}"] for r in h], color="C0" if q == 50 else "C1",
                    lw=1.5 if q == 50 else 1, label=f"{q}th percentile")
        ax.set(title=f"({letter}) sigmoid input, {label}", xlabel="training step",
               ylim=(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def check_arguments(args, command: str) -> None:
    """Every numeric option, before any data loads: one clear line per mistake."""
    import math

    from ..errors import UsageError
    minimum = {"steps": 1, "batch_size": 1, "eval_every": 1, "bn_stats_batches": 1,
               "checkpoint_every": 0, "seeds": 1, "unit": 0}
    for name, low in minimum.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise UsageError(f"minidl {command}: --{name.replace('_', '-')} must be >= {low}, "
                             f"got {value}")
    for name in ("lr", "momentum"):
        value = getattr(args, name, None)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise UsageError(f"minidl {command}: --{name} must be >= 0, got {value}")
    if getattr(args, "init_std", None) is not None and not (
            args.init_std >= 0 and math.isfinite(args.init_std)):
        raise UsageError(f"minidl {command}: --init-std must be a finite number >= 0, "
                         f"got {args.init_std}")
    if getattr(args, "unit", None) is not None and args.unit >= 100:
        raise UsageError(f"minidl {command}: --unit must be < 100 (the last hidden layer "
                         f"has 100 sigmoids), got {args.unit}")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise UsageError(f"minidl {command}: --threads must be >= 1, got {args.threads}")
    check_device(args, command)


def check_device(args, command: str) -> None:
    """`--device cuda` without numba-cuda or a GPU: one clear line, before any work."""
    if getattr(args, "device", "cpu") == "cuda":
        from .. import cuda
        if not cuda.is_available():
            from ..errors import UsageError
            raise UsageError(f"minidl {command}: --device cuda: CUDA is not available: "
                             f"{cuda.unavailable_reason()}")


def run(args) -> dict:
    from ..distributed.launch import on_main
    from .run_dir import claim
    check_arguments(args, "figure1")
    lock = on_main(lambda: claim(args.out, args.resume, args.overwrite, "figure1"))
    try:
        return run_seeds(args) if getattr(args, "seeds", 1) > 1 else run_one(args)
    finally:
        if lock is not None:
            lock.release()


def run_seeds(args) -> dict:
    """`run_one` per seed (in out/seed-K), then the median and range over seeds."""
    import copy

    from ..distributed.launch import is_main
    out = Path(args.out)
    summaries, histories = [], []
    for k in range(args.seeds):
        sub = copy.copy(args)
        sub.seed, sub.seeds, sub.out = args.seed + k, 1, str(out / f"seed-{args.seed + k}")
        s = run_one(sub)
        if s.get("interrupted"):
            return s
        summaries.append(s)
        histories.append(s["histories"])
    dataset = summaries[0]["dataset"]
    agg = summarize_seeds(summaries)
    text = format_seeds(agg, dataset)
    bands = {}
    for key, _, _ in NETWORKS:
        steps = [r["step"] for r in histories[0][key]]
        acc = np.array([[r["test_acc"] for r in h[key]] for h in histories])
        bands[key] = (steps, acc.min(0), np.median(acc, 0), acc.max(0))
    if not is_main():
        return agg
    first = {key: {"history": histories[0][key]} for key, _, _ in NETWORKS}
    plot(first, out / "figure1.png", f"BN paper Figure 1 on {dataset}: {args.seeds} seeds "
         f"(panel a: median and range; b, c: seed {args.seed})", bands=bands)
    (out / "summary.txt").write_text(text)
    (out / "summary.json").write_text(json.dumps({"seeds": agg, "per_seed": [
        {k: v for k, v in s.items() if k != "histories"} for s in summaries]}, indent=2))
    print(text)
    return agg


def run_one(args) -> dict:
    if getattr(args, "quick", False):
        args.steps = min(args.steps, 3000)
        args.eval_every = min(args.eval_every, 250)
        args.checkpoint_every = min(args.checkpoint_every, 1000)
    if args.threads:
        from ..backend import set_num_threads
        set_num_threads(args.threads)
    from ..distributed.launch import is_main, local_main_first
    out = Path(args.out)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
    train, test = local_main_first(lambda: load_data(args.dataset, args.data_root,
                                                     args.binarize))
    dataset_note = ("MNIST" if args.dataset == "mnist" else "Fashion-MNIST") + \
        (" (binarized)" if args.binarize else "")
    t0 = time.perf_counter()
    results = {}
    for key, bn, label in NETWORKS:
        trainer = make_trainer(bn, args, train, test, out / key, f"MLP {label}")
        results[key] = trainer.fit(args.steps, resume=args.resume)
        group = trainer.optimizer.param_groups[0]
        results[key].update(lr=group["lr"], momentum=group["momentum"])
        if results[key]["interrupted"]:
            if is_main():
                print(f"\ninterrupted: checkpoint saved in {out / key}; continue with "
                      f"--resume")
            return {"interrupted": True}
    wall = time.perf_counter() - t0
    summary = summarize(results, args, dataset_note)
    summary["wall_seconds"] = wall
    if not is_main():  # rank 0 writes and prints the results
        summary["histories"] = {key: results[key]["history"] for key, _, _ in NETWORKS}
        return summary
    write_csv(results, out / "figure1.csv")
    drew = plot(results, out / "figure1.png",
                f"BN paper Figure 1 on {dataset_note}: {args.steps} steps, batch "
                f"{args.batch_size}, SGD lr {summary['protocol']['lr']}, momentum "
                f"{summary['protocol']['momentum']}")
    text = format_summary(summary) + f"wall time {wall:.1f} s\n"
    (out / "summary.txt").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["histories"] = {key: results[key]["history"] for key, _, _ in NETWORKS}
    print(text)
    print(f"wrote {out / 'figure1.csv'}, {out / 'summary.txt'}" +
          (f", {out / 'figure1.png'}" if drew else " (no figure1.png: pip install matplotlib)"))
    return summary

"""`minidl train`: one network of the paper's MNIST experiment, with every knob exposed."""
from __future__ import annotations

import json
from pathlib import Path

from .figure1 import add_arguments, load_data, make_trainer

MODELS = ("mlp",)


def add_train_arguments(p) -> None:
    p.add_argument("--model", default="mlp", choices=MODELS)
    p.add_argument("--bn", action="store_true", help="batch norm before each sigmoid")
    add_arguments(p, quick_flag=False)
    p.set_defaults(out="runs/train")


def run(args) -> dict:
    from ..distributed.launch import on_main
    from .figure1 import check_arguments
    from .run_dir import claim
    check_arguments(args, "train")
    lock = on_main(lambda: claim(args.out, args.resume, args.overwrite, "train"))
    try:
        return _run(args)
    finally:
        if lock is not None:
            lock.release()


def _run(args) -> dict:
    if args.threads:
        from ..backend import set_num_threads
        set_num_threads(args.threads)
    from ..distributed.launch import is_main, local_main_first
    train, test = local_main_first(lambda: load_data(args.dataset, args.data_root,
                                                     args.binarize))
    out = Path(args.out)
    trainer = make_trainer(args.bn, args, train, test, out,
                           f"MLP {'with' if args.bn else 'without'} BN")
    result = trainer.fit(args.steps, resume=args.resume)
    last = result["history"][-1] if result["history"] else {}
    report = {"steps": result["steps"], "interrupted": result["interrupted"],
              "final_test_acc": last.get("test_acc"), "bn_eval": last.get("bn_eval"),
              "steps_per_second": result["steps_per_second"],
              "train_seconds": result["train_seconds"]}
    if not is_main():
        return report
    print(json.dumps(report, indent=2))
    if result["interrupted"]:
        print(f"interrupted: checkpoint saved in {out}; continue with --resume")
    return report

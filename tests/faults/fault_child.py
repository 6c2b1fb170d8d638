"""The process the fault tests kill: `python fault_child.py train OUT STEPS [--resume]`
trains a tiny MLP on toy data with a checkpoint every step, under the output folder's
lock, like `minidl train` does (STEP_DELAY=S: each step S seconds longer, the same
results). With MIDSAVE=K it stops halfway through writing the
checkpoint of step K, prints MIDSAVE and sleeps: the test kills it there."""
import os
import sys
import time

import numpy as np


def trainer(out):
    import minidl as md
    from minidl import optim
    from minidl.data import DataLoader, TensorDataset
    from minidl.models import mlp
    from minidl.train import Trainer
    md.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    model = mlp(in_features=12, hidden=(16,), num_classes=4, bn=True, init_std=0.3)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    delay = float(os.environ.get("STEP_DELAY", "0"))
    if delay:  # a slower run, so that kills at random moments land inside it
        real_step = opt.step

        def step(*args, **kwargs):
            time.sleep(delay)
            return real_step(*args, **kwargs)
        opt.step = step
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, seed=0)
    test = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=64)
    return Trainer(model, opt, loader, eval_loader=test, eval_every=10, checkpoint_every=1,
                   out_dir=out, progress=False)


def slow_save_at(step, trainer_obj):
    """Make the checkpoint of `step` stop halfway through its write."""
    import minidl.serialization as ser
    real = ser.np.savez

    def savez(f, **arrays):
        if trainer_obj.step != step:
            return real(f, **arrays)
        import io
        buf = io.BytesIO()
        real(buf, **arrays)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print("MIDSAVE", flush=True)
        time.sleep(120)
    ser.np.savez = savez


def main(argv):
    from minidl.experiments.run_dir import claim
    out, steps = argv[1], int(argv[2])
    resume = "--resume" in argv
    lock = claim(out, resume=resume, overwrite=not resume, command="fault-child")
    t = trainer(out)
    if os.environ.get("MIDSAVE"):
        slow_save_at(int(os.environ["MIDSAVE"]), t)
    print("READY", flush=True)
    t.fit(steps, resume=resume)
    lock.release()
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

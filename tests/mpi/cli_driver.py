"""`minidl ARGS...` as one rank of an MPI job, for tests/test_distributed.py.

MINIDL_TEST_SIGNAL="RANK:STEP:SIGNAL" makes rank RANK send itself SIGNAL (KILL: dies,
STOP: hangs) when its Trainer is about to take step STEP+1."""
import os
import signal
import sys

spec = os.environ.get("MINIDL_TEST_SIGNAL")
if spec:
    from minidl.train import trainer
    rank, step, name = spec.split(":")
    if int(os.environ.get("OMPI_COMM_WORLD_RANK", "0")) == int(rank):
        original = trainer.Trainer.train_step

        def train_step(self):
            if self.step == int(step):
                with open(os.environ["MINIDL_TEST_PIDFILE"], "a") as f:
                    f.write(f"{os.getpid()}\n")
                os.kill(os.getpid(), getattr(signal, "SIG" + name))
            return original(self)
        trainer.Trainer.train_step = train_step

from minidl.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))

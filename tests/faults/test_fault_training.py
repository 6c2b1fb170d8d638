"""Fault injection on training and checkpointing: SIGKILL at random points and in the
middle of a checkpoint write, a full disk during a checkpoint, a read-only output folder,
corrupted and truncated checkpoints. In every case the last good checkpoint survives and
loads, no partial file sits under a final name, and the error is one clear line."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import minidl as md
from minidl.serialization import CheckpointError

CHILD = os.path.join(os.path.dirname(__file__), "fault_child.py")
STEPS = 150
FINAL_NAMES = {"checkpoint.npz", "metrics.jsonl", ".lock"}


def spawn(out, *extra, env=None):
    e = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([sys.executable, CHILD, "train", str(out), str(STEPS), *extra],
                            env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(out, *extra):
    proc = spawn(out, *extra)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "DONE" in stdout, stderr[-2000:]


def wait_for(proc, word, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if word in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"child ended before {word}: {proc.stderr.read()[-2000:]}")
    raise AssertionError(f"no {word} within {timeout} s")


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def assert_same_run(a_dir, b_dir):
    a, b = md.load(a_dir / "checkpoint.npz"), md.load(b_dir / "checkpoint.npz")
    assert a["step"] == b["step"] == STEPS
    for key, value in a["model"].items():
        np.testing.assert_array_equal(value, b["model"][key], err_msg=key)

    def rows(d):
        out = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        for r in out:
            r.pop("train_seconds")
        return out
    assert rows(a_dir) == rows(b_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    finish(out)
    return out


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing(tmp_path, reference):
    out = tmp_path / "run"
    rng = random.Random(1234)
    last_step = 0
    steps_seen = []
    for attempt in range(4):
        ckpt = out / "checkpoint.npz"
        before = ckpt.stat().st_mtime_ns if ckpt.exists() else None
        # 10 ms a step: the whole run (1.5 s) outlasts the four kills (at most ~0.3 s
        # after a new checkpoint each), which would all land after its end on a machine
        # that trains the 150 steps in 0.3 s
        proc = spawn(out, *(["--resume"] if attempt else []), env={"STEP_DELAY": "0.01"})
        wait_for(proc, "READY")
        deadline = time.time() + 60  # wait for progress, then kill at a random moment
        while time.time() < deadline and proc.poll() is None and (
                not ckpt.exists() or ckpt.stat().st_mtime_ns == before):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.3))
        kill(proc)
        names = {p.name for p in out.iterdir()}
        # only final names (complete files) and temp names; never a partial final file
        assert all(n in FINAL_NAMES or n.endswith(".tmp") for n in names), names
        if (out / "checkpoint.npz").exists():
            step = md.load(out / "checkpoint.npz")["step"]  # loads: not corrupt
            assert step >= last_step                      # nothing saved was lost
            last_step = step
            steps_seen.append(step)
    assert len(set(steps_seen)) >= 2, steps_seen  # the kills did land at different points
    finish(out, "--resume")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # cleaned up
    assert_same_run(reference, out)


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_checkpoint_write(tmp_path, reference):
    out = tmp_path / "run"
    proc = spawn(out, env={"MIDSAVE": "37"})
    wait_for(proc, "MIDSAVE")
    kill(proc)
    assert md.load(out / "checkpoint.npz")["step"] == 36  # the previous one, intact
    temps = [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].name.startswith(".checkpoint.npz.")
    finish(out, "--resume")
    assert not temps[0].exists()  # the next start removed the half-written file
    assert_same_run(reference, out)


# ---- in-process faults --------------------------------------------------------------------

def small_trainer(out, checkpoint_every=5):
    sys.path.insert(0, os.path.dirname(__file__))
    try:
        from fault_child import trainer
    finally:
        sys.path.pop(0)
    t = trainer(out)
    t.checkpoint_every = checkpoint_every
    return t


def test_disk_full_during_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    import minidl.serialization as ser
    t = small_trainer(tmp_path)
    real = ser.np.savez
    calls = []

    def savez_then_full(f, **arrays):
        calls.append(t.step)
        if t.step == 10:
            f.write(b"PK\x03\x04" + bytes(100))  # part of the file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, **arrays)
    monkeypatch.setattr(ser.np, "savez", savez_then_full)
    with pytest.raises(OSError) as info:
        t.fit(20)
    assert info.value.errno == errno.ENOSPC and calls == [5, 10]
    assert info.value.filename == str(tmp_path / "checkpoint.npz")
    assert "it still holds the checkpoint of step 5" in str(info.value)
    assert md.load(tmp_path / "checkpoint.npz")["step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "metrics.jsonl"]


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="apt-get install dataset-fashion-mnist")
def test_disk_full_is_one_line_from_the_cli(tmp_path, monkeypatch, capsys):
    import minidl.serialization as ser
    from minidl.cli import main
    real = ser.np.savez
    calls = []

    def savez_then_full(f, **arrays):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, **arrays)
    monkeypatch.setattr(ser.np, "savez", savez_then_full)
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "fashion-mnist", "--steps", "6", "--eval-every", "3",
               "--checkpoint-every", "2", "--bn-stats-batches", "1", "--no-progress",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{out / 'checkpoint.npz'}: No space left on device" in err
    assert "it still holds the checkpoint of step 2" in err
    assert md.load(out / "checkpoint.npz")["step"] == 2


def test_read_only_output_folder_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from minidl.cli import main
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
    else:  # root ignores permissions: make the filesystem refuse as a read-only one would
        real_open = os.open

        def open_ro(path, flags, *args, **kwargs):
            if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, *args, **kwargs)
        monkeypatch.setattr(os, "open", open_ro)
    try:
        rc = main(["train", "--out", str(out), "--steps", "2", "--no-progress",
                   "--dataset", "mnist", "--data-root", str(tmp_path / "none")])
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(out) in err and ("Read-only" in err or "Permission denied" in err)
    assert list(out.iterdir()) == []  # nothing written, nothing half-written


def _flips(data, rng, n):
    for _ in range(n):
        i = rng.randrange(len(data))
        yield i, data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]


def test_corrupted_and_truncated_checkpoints_never_load_wrong(tmp_path):
    t = small_trainer(tmp_path)
    t.fit(5)
    good_path = tmp_path / "checkpoint.npz"
    data = good_path.read_bytes()
    original = md.load(good_path)
    rng = random.Random(7)
    bad = tmp_path / "bad.npz"
    cases = [data[:rng.randrange(len(data))] for _ in range(15)] + \
        [flipped for _, flipped in _flips(data, rng, 30)]
    for case in cases:
        bad.write_bytes(case)
        try:
            loaded = md.load(bad)
        except CheckpointError as e:
            assert "bad.npz" in str(e) and "\n" not in str(e)
            continue
        # a flip the format does not cover (zip metadata) may load: then unchanged
        assert loaded["step"] == original["step"]
        for k, v in original["model"].items():
            np.testing.assert_array_equal(loaded["model"][k], v)


def test_resume_from_a_corrupt_checkpoint_refuses_and_keeps_the_file(tmp_path):
    t = small_trainer(tmp_path)
    t.fit(5)
    path = tmp_path / "checkpoint.npz"
    damaged = path.read_bytes()[:-40]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="checkpoint.npz"):
        small_trainer(tmp_path).fit(10, resume=True)
    assert path.read_bytes() == damaged  # never overwritten by a fresh start

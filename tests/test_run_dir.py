"""An output folder is taken by one run at a time and never overwritten by mistake."""
import subprocess
import sys

import pytest

from minidl.cli import main
from minidl.experiments.run_dir import RunDirError, claim


def test_a_second_run_on_a_locked_folder_refuses(tmp_path):
    lock = claim(tmp_path / "r", resume=False, overwrite=False, command="train")
    with pytest.raises(RunDirError, match="in use by another run"):
        claim(tmp_path / "r", resume=True, overwrite=False, command="train")
    lock.release()
    claim(tmp_path / "r", resume=True, overwrite=False, command="train").release()


def test_the_lock_dies_with_its_process(tmp_path):
    code = ("import sys; from minidl.experiments.run_dir import claim; "
            f"claim({str(tmp_path / 'r')!r}, False, False, 'train'); print('held', flush=True)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "held" in proc.stdout
    claim(tmp_path / "r", resume=False, overwrite=False, command="train").release()


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "r" / "nobn").mkdir(parents=True)
    (tmp_path / "r" / "nobn" / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunDirError, match="holds an earlier run; pass --resume"):
        claim(tmp_path / "r", resume=False, overwrite=False, command="figure1")
    claim(tmp_path / "r", resume=False, overwrite=True, command="figure1").release()
    claim(tmp_path / "r", resume=True, overwrite=False, command="figure1").release()
    with pytest.raises(SystemExit, match="contradict"):
        claim(tmp_path / "r", resume=True, overwrite=True, command="figure1")


@pytest.mark.parametrize("command", ["train", "figure1"])
def test_cli_refuses_before_loading_data(tmp_path, command, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    # a dataset that does not exist: the refusal must come first
    args = [command, "--dataset", "mnist", "--data-root", str(tmp_path / "nothing"),
            "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "holds an earlier run" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["train", "figure1"])
@pytest.mark.parametrize("flag,value,message", [
    ("--steps", "0", "--steps must be >= 1"), ("--eval-every", "0", "--eval-every must be >= 1"),
    ("--bn-stats-batches", "0", "--bn-stats-batches must be >= 1"),
    ("--batch-size", "0", "--batch-size must be >= 1"), ("--lr", "-1", "--lr must be >= 0")])
def test_bad_step_arguments_are_one_line_before_data_loads(tmp_path, command, flag, value,
                                                          message, capsys):
    args = [command, "--dataset", "mnist", "--data-root", str(tmp_path / "nothing"),
            "--out", str(tmp_path / "o"), "--no-progress", flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path):
    run = tmp_path / "r" / "bn"
    run.mkdir(parents=True)
    stale = run / ".checkpoint.npz.k2j3h4.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = run / "checkpoint.npz"
    keep.write_bytes(b"the last good one")
    claim(tmp_path / "r", resume=True, overwrite=False, command="train").release()
    assert not stale.exists() and keep.read_bytes() == b"the last good one"

"""`minidl bench` for kernel benchmarkers: single shapes from the command line, suite
filters, and `minidl bench compare`. These check the harness and the schema on tiny
shapes with the harness's smallest calibration (--quick), never the speed of anything;
the machine limits are replaced by fixed numbers (they are checked in test_bench.py)."""
import ast
import copy
import json
import os
import subprocess
import sys
import time

import pytest

from minidl.benchmarks import cases, harness, report, suite
from minidl.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_TORCH = harness.torch_available()
LIMITS = {"fma_peak_gflops": 100.0, "gemm_gflops": 80.0, "copy_gbs": 10.0, "triad_gbs": 10.0,
          "gemm_n": 64, "bandwidth_mib": 1, "blas": "test", "threading_layer": "test",
          "numba_threads": 1}


@pytest.fixture(autouse=True)
def fixed_limits(monkeypatch):
    monkeypatch.setattr(harness, "limits", lambda quick=False: dict(LIMITS))


def bench_json(tmp_path, *argv):
    """Run `minidl bench ... --quick --threads 1 --json F` in this process; the result."""
    path = tmp_path / f"r{len(list(tmp_path.iterdir()))}.json"
    assert main(["bench", *argv, "--quick", "--threads", "1", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["schema"] == harness.SCHEMA and result["threads"] == 1
    return result


@pytest.mark.slow
def test_conv2d_single_shape_with_every_option(tmp_path, capsys):
    r = bench_json(tmp_path, "conv2d", "--input", "2,4,7,9", "--out-channels", "6",
                   "--kernel", "3", "--stride", "2", "--padding", "2", "--groups", "2",
                   "--dilation", "2", "--dtype", "float64", "--pass", "fwd,bwd-w")
    rows = r["kernels"]
    assert r["suite"] == "single" and [x["pass"] for x in rows] == ["forward", "backward_weight"]
    for x in rows:
        assert x["case"] == "(2, 4, 7, 9)->6 k3 s2 p2 g2 d2" and x["dtype"] == "float64"
        # Ho = (7 + 4 - 2*2 - 1) // 2 + 1 = 4, Wo = 5; flops = 2*N*K*Ho*Wo*(C/g)*R*S
        assert x["work"] == 2 * 2 * 6 * 4 * 5 * 2 * 9
        assert x["numba"]["median_s"] > 0 and x["numpy"]["median_s"] > 0
        assert (x["torch"] is not None) == HAS_TORCH
    assert "| conv2d | (2, 4, 7, 9)->6 k3 s2 p2 g2 d2 | forward |" in capsys.readouterr().out


@pytest.mark.slow
def test_other_single_shape_commands(tmp_path):
    only_numba = ["--backend", "numba"]  # no torch child: quicker
    bn = bench_json(tmp_path, "batch_norm", "--input", "3,5", "--pass", "bwd", *only_numba)
    assert [(x["case"], x["pass"]) for x in bn["kernels"]] == [("1d (3, 5)", "backward")]
    assert bn["kernels"][0]["torch"] is None and bn["kernels"][0]["numpy"] is None
    for op, tag in (("max_pool2d", "max"), ("avg_pool2d", "avg")):
        pool = bench_json(tmp_path, op, "--input", "1,2,5,5", "--kernel", "2", "--stride",
                          "2", *only_numba)
        assert [x["pass"] for x in pool["kernels"]] == ["forward", "backward"]
        assert pool["kernels"][0]["case"] == f"{tag} (1, 2, 5, 5) k2 s2 p0"
    mm = bench_json(tmp_path, "matmul", "--shapes", "3x5,5x2", *only_numba)
    assert [x["pass"] for x in mm["kernels"]] == list(cases.PASSES["matmul"])
    assert mm["kernels"][0]["case"] == "(3, 5) @ (5, 2)" and mm["kernels"][0]["work"] == 60
    cl = bench_json(tmp_path, "conv2d", "--input", "1,3,5,5", "--out-channels", "4",
                    "--format", "channels_last", "--pass", "forward", *only_numba)
    assert cl["kernels"][0]["minidl_impl"] == "numba, NHWC entry"


@pytest.mark.parametrize("argv, message", [
    (["conv2d", "--input", "2,3,8", "--out-channels", "4"], "--input '2,3,8': expected 4"),
    (["conv2d", "--input", "2,3,8,8"], "conv2d needs --out-channels"),
    (["conv2d", "--input", "2,3,8,8", "--out-channels", "4", "--groups", "2"],
     "--groups 2: must divide the input channels (3)"),
    (["conv2d", "--input", "1,1,2,2", "--out-channels", "1", "--kernel", "5"],
     "the output would be -2x-2"),
    (["conv2d", "--input", "1,1,4,4", "--out-channels", "1", "--pass", "backward"],
     "--pass 'backward': conv2d has the passes"),
    (["batch_norm", "--input", "2,x"], "--input '2,x'"),
    (["max_pool2d", "--input", "1,1,4,4", "--kernel", "2", "--padding", "2"],
     "--padding 2: at most half"),
    (["matmul", "--shapes", "4x5,6x7"], "the inner sizes 5 and 6 differ"),
    (["matmul", "--shapes", "4x5"], "expected two matrices"),
    (["conv2d", "--input", "1,1,4,4", "--out-channels", "1", "--dtype", "float16"],
     "--dtype 'float16'"),
    (["--only", "conv3d"], "--only 'conv3d'"),
    (["--backend", "cuda"], "--backend 'cuda'"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minidl bench: ") and message in err[0], err
    assert captured.out == ""


def test_single_shape_arguments_survive_a_fresh_process():
    """With OpenBLAS variables set, `minidl bench` reruns itself in a fresh process
    (minidl.benchmarks.suite) with the command line rebuilt from the parsed arguments."""
    from minidl.bench import _argv, build_parser
    argv = ["conv2d", "--input", "2,4,7,9", "--out-channels", "6", "--groups", "2",
            "--dtype", "float64", "--pass", "fwd", "--quick", "--backend", "numpy"]
    args = build_parser().parse_args(argv)
    again = build_parser().parse_args(_argv(args))
    assert vars(again) == vars(args)
    suite_args = build_parser().parse_args(["--quick", "--only", "matmul", "--threads", "1"])
    assert vars(build_parser().parse_args(_argv(suite_args))) == vars(suite_args)


def test_suite_filters(tmp_path):
    r = bench_json(tmp_path, "--suite", "kernels", "--only", "matmul,batch_norm",
                   "--backend", "numpy")
    assert {x["kernel"] for x in r["kernels"]} == {"matmul", "batch_norm"}
    assert r["backends"] == ["numba", "numpy"] and "compile" not in r and "train" not in r
    for x in r["kernels"]:
        assert x["torch"] is None and x["torch_configs"] is None
        assert (x["numpy"] is None) == (x["kernel"] == "matmul")


def test_single_shape_cases_match_the_suites():
    """A suite row and the same shape from the command line are the same case."""
    spec = cases.single_specs("conv2d", {"input": "64,32,28,28", "out_channels": "64",
                                         "kernel": "3", "padding": "1", "pass": "fwd"})[0]
    suite_case = next(c for c in cases.cases() if c.kernel == "conv2d"
                      and c.case.startswith("(64, 32, 28, 28)") and c.pass_ == "forward")
    single = cases.build(spec)
    assert (single.case, single.work, single.bound) == (suite_case.case, suite_case.work,
                                                        suite_case.bound)
    assert cases.parse_passes("all", "batch_norm") == ["forward", "backward"]
    assert cases.parse_passes("bwd-in,fwd", "conv2d") == ["backward_input", "forward"]


# --- compare ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bn_runs(tmp_path_factory):
    """The same quick run twice: as it is, and with a deliberately slowed kernel (a test
    double that does the work and then waits 2 ms, over 50x the tiny kernel's time)."""
    import minidl.kernels.cpu as K
    mp = pytest.MonkeyPatch()
    mp.setattr(harness, "limits", lambda quick=False: dict(LIMITS))
    specs = cases.single_specs("batch_norm", {"input": "2,3,4,4", "pass": "all"})
    try:
        normal = suite.run_single(specs, threads=1, quick=True, backends=("numba",))
        original = K.batch_norm_train_forward

        def slowed(*args):
            out = original(*args)
            time.sleep(0.002)
            return out
        mp.setattr(K, "batch_norm_train_forward", slowed)
        slow = suite.run_single(specs, threads=1, quick=True, backends=("numba",))
    finally:
        mp.undo()
    out = tmp_path_factory.mktemp("compare")
    paths = {}
    for name, result in (("normal", normal), ("slow", slow)):
        paths[name] = str(out / f"{name}.json")
        report.write_json(result, paths[name])
    return paths


def test_self_compare_is_no_change_on_every_row(bn_runs, capsys):
    assert main(["bench", "compare", bn_runs["normal"], bn_runs["normal"],
                 "--fail-on-slower", "0"]) == 0
    out = capsys.readouterr().out
    comparison = report.compare(*(report.load_result(bn_runs["normal"]),) * 2)
    assert comparison["rows"] and comparison["mismatches"] == []
    assert all(r["verdict"] == "no significant change" and r["ratio"] == 1
               for r in comparison["rows"])
    assert "0 faster, 0 slower" in out and "WARNING" not in out and "pass" in out


def test_slowed_kernel_is_flagged_and_fails_the_gate(bn_runs, capsys):
    old, new = report.load_result(bn_runs["normal"]), report.load_result(bn_runs["slow"])
    by_pass = {r["pass"]: r for r in report.compare(old, new)["rows"]}
    assert by_pass["forward"]["verdict"] == "slower" and by_pass["forward"]["ratio"] > 2
    assert main(["bench", "compare", bn_runs["normal"], bn_runs["slow"],
                 "--fail-on-slower", "10"]) == 1
    out = capsys.readouterr().out
    assert "| forward | float32 |" in out and "slower" in out and "FAIL, " in out
    # without the gate it only reports; reversed, the row is faster
    assert main(["bench", "compare", bn_runs["normal"], bn_runs["slow"]]) == 0
    assert report.compare(new, old)["rows"][0]["verdict"] == "faster"


def test_machine_mismatch_is_flagged(bn_runs, tmp_path, capsys):
    old = report.load_result(bn_runs["normal"])
    new = copy.deepcopy(old)
    new["threads"] = 2
    new["machine"]["cpu"] = "Another CPU"
    new["machine"]["versions"]["numba"] = "0.0.1"
    del new["kernels"][0]
    path = tmp_path / "other.json"
    path.write_text(json.dumps(new))
    assert main(["bench", "compare", bn_runs["normal"], str(path)]) == 0
    out = capsys.readouterr().out
    warning = next(line for line in out.splitlines() if line.startswith("WARNING"))
    for part in ("threads: 1 vs 2", "CPU: ", "Another CPU", "numba: "):
        assert part in warning
    assert "1 rows only in the old run" in out


def test_compare_rejects_files_that_are_not_results(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    assert main(["bench", "compare", str(bad), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.json: not a minidl bench result" in err[0]


def test_compare_reads_schema_1_results():
    row = {"kernel": "matmul", "case": "c", "pass": "forward",
           "numba": {"median_s": 1.0, "q1_s": 0.9, "q3_s": 1.1}}
    train = {"case": "MLP", "minidl_steps_s": 10.0, "minidl_min_steps_s": 9.0,
             "minidl_max_steps_s": 11.0}
    old = {"schema": "minidl-bench/1", "threads": 1, "kernels": [row], "train": [train]}
    new = copy.deepcopy(old)
    new["kernels"][0]["numba"] = {"median_s": 2.0, "q1_s": 1.9, "q3_s": 2.1}
    rows = report.compare(old, new)["rows"]
    assert [r["verdict"] for r in rows] == ["slower", "no significant change"]


# --- structure ------------------------------------------------------------------------------

def test_benchmarks_import_downward_only():
    """No import circles inside benchmarks/, and none of its modules imports another
    that imports it back (checked on the source: module-level and function-level)."""
    folder = os.path.join(ROOT, "benchmarks")
    graph = {}
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                tree = ast.parse(f.read())
            deps = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    if node.module == "benchmarks":
                        deps |= {a.name for a in node.names}
                    elif node.module.startswith("benchmarks."):
                        deps.add(node.module.split(".")[1])
            graph[name[:-3]] = deps - {name[:-3]}
    state = {}

    def visit(n, path):
        assert state.get(n) != "open", f"import circle: {' -> '.join(path + [n])}"
        if state.get(n) is None:
            state[n] = "open"
            for d in graph.get(n, ()):
                visit(d, path + [n])
            state[n] = "done"
    for n in graph:
        visit(n, [])
    assert graph["harness"] <= {"_limits"} and "suite" not in graph["cases"]


def test_minidl_imports_benchmarks_only_for_bench():
    code = ("import sys; import minidl; from minidl.cli import build_parser; build_parser(); "
            "assert not [m for m in sys.modules if m.startswith('benchmarks')], 'imported'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get(
        "PYTHONPATH")])))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]

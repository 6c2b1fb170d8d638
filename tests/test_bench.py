"""`minidl bench` runs and reports well-formed results. Benchmarks are never timed tests:
these check the harness on tiny shapes (--quick), not the speed of anything."""
import argparse
import json
import math
import os
import subprocess
import sys

import pytest

from minidl.benchmarks import cases, harness, report, suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_TORCH = harness.torch_available()
STATS = ("median_s", "q1_s", "q3_s", "min_s", "max_s", "first_call_s")


def positive(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `minidl bench --suite all --quick` in a fresh process, like a user's; it also
    checks that the benchmark process itself never imports torch."""
    out = tmp_path_factory.mktemp("bench")
    js, md = out / "bench.json", out / "bench.md"
    code = ("import sys; from minidl.cli import main; "
            f"rc = main(['bench', '--suite', 'all', '--quick', '--json', {str(js)!r}, "
            f"'--markdown', {str(md)!r}]); "
            "assert 'torch' not in sys.modules, 'torch imported in the numba process'; "
            "sys.exit(rc)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get(
        "PYTHONPATH")])))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(js.read_text()), md.read_text(), res.stdout


@pytest.mark.slow
def test_json_machine_and_limits(quick_run):
    result, _, _ = quick_run
    assert result["schema"] == harness.SCHEMA == "minidl-bench/2" and result["quick"] is True
    m = result["machine"]
    for key in ("date", "cpu", "blas", "numba_threading_layer", "platform"):
        assert isinstance(m[key], str) and m[key]
    assert isinstance(m["cpu_flags"], list) and m["threads"] == result["threads"]
    assert m["load_average"] is None or len(m["load_average"]) == 3
    assert m["cores"] >= 1 and 1 <= m["usable_cores"] <= m["cores"]
    assert m["versions"]["numpy"] and m["versions"]["numba"]
    assert (m["versions"]["torch"] is not None) == HAS_TORCH
    assert not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(m["env"]["torch_children"])
    for key in ("gemm_gflops", "copy_gbs", "triad_gbs"):
        assert positive(result["limits"][key])
    assert positive(result["wall_seconds"]["total"])


@pytest.mark.slow
def test_json_kernel_rows(quick_run):
    rows = quick_run[0]["kernels"]
    assert {r["kernel"] for r in rows} == set(cases.FAMILIES)
    assert len(rows) == len(cases.cases(quick=True))
    for r in rows:
        assert all(positive(r["numba"][k]) for k in STATS), r
        assert r["numba"]["q1_s"] <= r["numba"]["median_s"] <= r["numba"]["q3_s"]
        assert r["numba"]["warmup_calls"] >= 1 and r["numba"]["warmup_s"] > 0
        assert r["numba"]["unstable"] == (r["numba"]["spread"] > harness.SPREAD_WARN)
        assert r["dtype"] == "float32" and cases.build(r["spec"]).case == r["case"]
        assert positive(r["work"]) and positive(r["rate"]) and positive(r["fraction_of_limit"])
        assert r["unit"] == ("GFLOP/s" if r["kernel"] in ("conv2d", "matmul") else "GB/s")
        if r["kernel"] == "matmul":  # minidl's matmul is NumPy's: one column
            assert r["numpy"] is None and r["minidl_impl"] == "NumPy BLAS"
        else:
            assert positive(r["numpy"]["median_s"]) and positive(r["numpy_over_numba"])
        if HAS_TORCH:
            assert positive(r["torch"]["median_s"]) and positive(r["torch_over_numba"])
            # the kept configuration is the fastest of those tried
            assert r["torch"]["config"] in r["torch_configs"]
            assert r["torch"]["median_s"] == min(r["torch_configs"].values())
            threads = {c.split(", ")[-1] for c in r["torch_configs"]}
            assert "1 thread" in threads
            if r["case"].count(",") >= 3 and r["kernel"] != "matmul":  # 4-D input
                assert any(c.startswith("channels_last") for c in r["torch_configs"])
        else:
            assert r["torch"] is None and r["torch_over_numba"] is None
    # a first conv layer (C=1) has no input gradient to time
    first = [r for r in rows if r["kernel"] == "conv2d" and ", 1, " in r["case"]]
    assert first and "backward_input" not in {r["pass"] for r in first}


@pytest.mark.slow
def test_json_training_rows(quick_run):
    rows = quick_run[0]["train"]
    assert [r["case"] for r in rows] == [name for name, _, _ in cases.TRAIN_CASES]
    for r in rows:
        assert positive(r["minidl_steps_s"]) and positive(r["minidl_first_step_s"])
        assert r["minidl_min_steps_s"] <= r["minidl_steps_s"] <= r["minidl_max_steps_s"]
        if HAS_TORCH:
            assert positive(r["torch_steps_s"]) and positive(r["ratio_vs_torch"])
            assert r["torch_steps_s"] == max(r["torch_configs"].values())
            assert r["torch_threads"] in (1, quick_run[0]["threads"])


@pytest.mark.slow
def test_markdown_has_a_row_per_kernel_and_case(quick_run):
    result, md, stdout = quick_run
    assert md.startswith("# minidl benchmark") and md in stdout  # printed as well
    for heading in ("## Machine limits", "## Kernels", "## Training steps"):
        assert heading in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    for r in result["kernels"]:
        assert sum(line.startswith(f"| {r['kernel']} | {r['case']} | {r['pass']} |")
                   for line in table) == 1, r
    for r in result["train"]:
        assert sum(line.startswith(f"| {r['case']} |") for line in table) == 1
    # in each table, every row has as many cells as the header
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line.count("|"))
        elif current:
            tables.append(current)
            current = []
    assert len(tables) >= 3 and all(len(set(t)) == 1 for t in tables), tables


@pytest.mark.slow
def test_markdown_without_torch(quick_run):
    """The report of a machine without torch: dashes, not errors."""
    result = json.loads(json.dumps(quick_run[0]))
    result["machine"]["versions"]["torch"] = None
    for r in result["kernels"]:
        r.update(torch=None, torch_configs=None, torch_over_numba=None)
    for r in result["train"]:
        for k in ("torch_steps_s", "torch_threads", "torch_config", "torch_configs",
                  "ratio_vs_torch"):
            r.pop(k, None)
    md = report.markdown(result)
    assert "torch not installed" in md
    row = next(line for line in md.splitlines() if line.startswith("| conv2d |"))
    assert row.count(" - |") >= 3


def test_json_writer_is_strict(tmp_path):
    path = tmp_path / "r.json"
    report.write_json({"a": (1, 2.5), "nan": float("nan"), "inf": [float("inf")]}, path)
    assert json.loads(path.read_text()) == {"a": [1, 2.5], "nan": None, "inf": [None]}


def test_measure_reports_median_and_spread():
    calls = []
    t = harness.measure(lambda: calls.append(1), repeats=5, min_sample=0.0005, budget=0.5)
    assert t["min_s"] <= t["q1_s"] <= t["median_s"] <= t["q3_s"] <= t["max_s"]
    assert t["samples"] == 5 and t["calls_per_sample"] > 1  # calibrated: one call is too short
    # first call, warm-up (calibration, excluded from the samples), samples
    assert len(calls) == 1 + t["warmup_calls"] + 5 * t["calls_per_sample"]
    assert t["warmup_calls"] >= t["calls_per_sample"] and t["warmup_s"] > 0


def test_spread_warning():
    steady = harness.summarize([1.0, 1.0, 1.01, 1.0])
    noisy = harness.summarize([1.0, 2.0, 1.0, 2.0, 1.5])
    assert not steady["unstable"] and noisy["unstable"] and noisy["spread"] > 0.1
    assert report._spread_warning([("a", steady)]) == []
    assert "b" in report._spread_warning([("a", steady), ("b", noisy)])[0]


def test_full_case_list_matches_the_benchmark_shapes():
    CONV, BN, POOL = cases.CONV_SHAPES, cases.BN_SHAPES, cases.POOL_CASES
    rows = cases.cases()
    count = {f: sum(r.kernel == f for r in rows) for f in cases.FAMILIES}
    first_layers = sum(s[0][1] == 1 for s in CONV)
    assert count == {"conv2d": 3 * len(CONV) - first_layers, "batch_norm": 2 * len(BN),
                     "pooling": 2 * len(POOL), "matmul": 3 * len(cases.MATMUL_SHAPES)}
    conv = next(r for r in rows if r.kernel == "conv2d" and "(64, 32, 28, 28)->64" in r.case)
    assert conv.work == 2 * 64 * 64 * 28 * 28 * 32 * 3 * 3
    bn = next(r for r in rows if r.case == "1d (60, 100)" and r.pass_ == "backward")
    assert bn.work == 3 * 60 * 100 * 4 and bn.bound == "memory"


def test_torch_child_gets_torchs_openmp_and_minidls_malloc_settings(monkeypatch):
    from minidl import _malloc
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    monkeypatch.delenv("MINIDL_MALLOC_TUNING", raising=False)
    env = harness.child_env()
    assert "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env
    assert ROOT in env["PYTHONPATH"].split(os.pathsep)
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(_malloc.MMAP_THRESHOLD)
    assert env["MALLOC_TRIM_THRESHOLD_"] == str(_malloc.TRIM_THRESHOLD)
    monkeypatch.setenv("MINIDL_MALLOC_TUNING", "0")  # minidl's opt-out holds for torch too
    assert not any(k.startswith("MALLOC_") for k in harness.child_env())


def test_startup_times_and_failures(tmp_path):
    ok = suite.startup_times(1, warm_runs=1, command=[sys.executable, "-c", "pass"])
    assert positive(ok["cold_s"]) and positive(ok["warm_s"]) and len(ok["warm_runs_s"]) == 1
    bad = suite.startup_times(1, warm_runs=1,
                              command=[sys.executable, "-c", "raise SystemExit('no data')"])
    assert "no data" in bad["error"]


def test_cli_rejects_impossible_thread_counts(capsys):
    from minidl.cli import main
    assert main(["bench", "--quick", "--threads", "100000"]) == 2
    assert "--threads 100000" in capsys.readouterr().err


def test_cli_arguments_survive_a_fresh_process():
    from minidl.bench import _argv
    args = argparse.Namespace(suite="train", threads=2, quick=True, json="r.json",
                              markdown=None, bench_command=None, only=None, backend=None)
    assert _argv(args) == ["--suite", "train", "--threads", "2", "--quick", "--json",
                           os.path.abspath("r.json")]


def test_compile_time_names_what_compiles_cold_and_nothing_warm():
    """benchmarks/compile_time.py: the cold run compiles (and reports per kernel), the
    warm run loads the cache; one small kernel stands in for every kernel."""
    from minidl.benchmarks import compile_time, report
    toy = "K.global_avg_pool2d_forward(np.ones((1, 2, 3, 3), np.float32))\n"
    res = compile_time.measure(toy)
    assert list(res["cold"]["by_kernel_s"]) == ["pooling._global_avg_fwd"]
    assert 0 < res["cold"]["by_kernel_s"]["pooling._global_avg_fwd"] <= res["cold"]["kernels_s"]
    assert 0 < res["warm"]["kernels_s"] < res["cold"]["kernels_s"]  # a cache load
    text = "\n".join(report._compile(res))
    assert "Slowest to compile" in text and "pooling._global_avg_fwd" in text


def test_training_rounds_pool_their_samples():
    from minidl.benchmarks import suite
    a = {"samples_s": [1.0, 3.0], "samples": 2, "calls_per_sample": 5, "first_call_s": 9.0}
    b = {"samples_s": [2.0, 10.0, 4.0], "samples": 3, "calls_per_sample": 4, "first_call_s": 1.0}
    t = suite._merged([a, b])
    assert t["median_s"] == 3.0 and t["samples"] == 5 and t["max_s"] == 10.0
    assert t["steps"] == 2 * 5 + 3 * 4 and t["first_call_s"] == 9.0


def test_kernel_rounds_keep_each_sides_fastest_round():
    from minidl.benchmarks import suite
    rounds = [{"median_s": 2.0, "first_call_s": 5.0}, {"median_s": 1.0, "first_call_s": 0.1},
              {"median_s": 3.0, "first_call_s": 0.1}]
    t = suite._fastest(rounds)
    assert t["median_s"] == 1.0 and t["round_medians_s"] == [2.0, 1.0, 3.0]
    assert t["first_call_s"] == 5.0  # the first round's: the JIT or cache load


def test_run_kernels_in_rounds_records_every_round():
    from minidl.benchmarks import cases, suite
    specs = cases.suite_specs(quick=True, families=("batch_norm",))[:1]
    rows = suite.run_kernels(specs, 1, mode="quick", backends=("numba", "numpy"), rounds=2)
    assert rows[0]["rounds"] == 2
    assert len(rows[0]["numba"]["round_medians_s"]) == 2
    assert rows[0]["numba"]["median_s"] == min(rows[0]["numba"]["round_medians_s"])
    assert len(rows[0]["numpy"]["round_medians_s"]) == 1  # the yardstick: first round only


def test_torch_configuration_is_chosen_by_its_typical_round():
    from minidl.benchmarks import suite
    steady = {"median_s": 1.0, "round_medians_s": [1.0, 1.0, 1.1]}
    lucky = {"median_s": 0.5, "round_medians_s": [0.5, 2.0, 2.0]}  # one flattering round
    assert suite._typical(steady) == 1.0 and suite._typical(lucky) == 2.0
    assert suite._typical({"median_s": 3.0}) == 3.0

"""minidl.serialization: pickle-free, atomic checkpoints."""

import math
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minidl
from minidl.serialization import CheckpointError, load, save


def assert_same(a, b, where="obj"):
    """Equal in value *and* type; arrays bit-exact (dtype, shape, bytes)."""
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), where
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where  # same keys (types too) in the same order
        for k in a:
            assert type(k) is type(next(kk for kk in b if kk == k)), f"{where} key {k!r}"
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    elif isinstance(a, float):
        assert a == b and math.copysign(1, a) == math.copysign(1, b), where
    else:
        assert a == b, where


def _arrays():
    rng = np.random.default_rng(0)
    nan_payload = np.array([np.nan, -np.nan, np.inf, -0.0], dtype=np.float32)
    nan_payload.view(np.uint32)[0] = 0x7FC00123  # a NaN with a payload survives
    return {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "f16": rng.standard_normal(7).astype(np.float16),
        "c128": rng.standard_normal(3) + 1j,
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "u8": np.arange(256, dtype=np.uint8),
        "i64": np.array([-(2**63), 2**63 - 1]),
        "u64": np.array([2**64 - 1], dtype=np.uint64),
        "bool": np.array([True, False]),
        "scalar0d": np.array(3.5),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((3, 2))),
        "strided": np.arange(20.0)[::3],
        "nan": nan_payload,
        "unicode": np.array(["ab", "cdé"]),
        "bytes": np.array([b"x", b"yz"]),
    }


def test_roundtrip_nested_checkpoint(tmp_path):
    gen = np.random.default_rng(42)
    gen.random(3)
    obj = {
        "model": {"conv.weight": minidl.tensor(np.ones((2, 1, 3, 3), np.float32)),
                  "bn.running_mean": np.zeros(2), "bn.num_batches": np.int64(7)},
        "optimizer": {"state": {0: {"momentum": np.full(3, 0.5, np.float32)}, 1: {}},
                      "lr": 0.1, "nesterov": False, "betas": (0.9, 0.999)},
        "step": 12,
        "rng": gen.bit_generator.state,
        "arrays": _arrays(),
        "scalars": [None, True, False, 0, -1, 2**100, -(2**70), 1.5, -0.0, float("nan"),
                    float("inf"), "", "ünïcode", np.float32(0.1), np.bool_(True),
                    np.uint8(255), np.str_("s")],
        "empties": [{}, [], ()],
        "keys": {1: "int", "1": "str", 2.5: "float", None: "none",
                 (1, "a"): "tuple"},
    }
    path = tmp_path / "ckpt.npz"
    save(obj, path)
    out = load(path)
    expected = dict(obj)
    expected["model"] = dict(obj["model"])
    expected["model"]["conv.weight"] = obj["model"]["conv.weight"].data  # Tensor -> array
    assert_same(expected, out)
    # bit_generator.state contains 128-bit ints; they come back exactly.
    assert out["rng"]["state"]["state"] > 2**64


@pytest.mark.parametrize("bitgen", ["PCG64", "MT19937", "Philox", "SFC64"])
def test_generator_state_roundtrip(tmp_path, bitgen):
    gen = np.random.Generator(getattr(np.random, bitgen)(2024))
    gen.standard_normal(11)
    save({"rng": gen.bit_generator.state}, tmp_path / "g")
    expected = gen.standard_normal(100)
    restored = np.random.Generator(getattr(np.random, bitgen)())
    restored.bit_generator.state = load(tmp_path / "g")["rng"]
    assert np.array_equal(restored.standard_normal(100), expected)


def test_minidl_global_rng_roundtrip(tmp_path):
    minidl.manual_seed(5)
    minidl.random.default_generator().random(4)
    save({"rng": minidl.get_rng_state()}, tmp_path / "r.npz")
    expected = minidl.random.default_generator().random(10)
    minidl.manual_seed(999)
    minidl.set_rng_state(load(tmp_path / "r.npz")["rng"])
    assert np.array_equal(minidl.random.default_generator().random(10), expected)


_scalars = (st.none() | st.booleans() | st.integers(-(2**130), 2**130)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5))
_arrays_st = st.builds(
    lambda shape, dtype, seed: (np.random.default_rng(seed).standard_normal(shape) * 100)
    .astype(dtype),
    st.lists(st.integers(0, 3), max_size=3).map(tuple),
    st.sampled_from([np.float32, np.float64, np.int32, np.uint8, np.bool_]),
    st.integers(0, 2**16))
_keys = st.text(max_size=4) | st.integers(-5, 5)
_trees = st.recursive(
    _scalars | _arrays_st,
    lambda kids: (st.lists(kids, max_size=3) | st.lists(kids, max_size=3).map(tuple)
                  | st.dictionaries(_keys, kids, max_size=3)),
    max_leaves=12)


@settings(max_examples=25, deadline=None)
@given(_trees)
def test_roundtrip_random_trees(tmp_path_factory, tree):
    path = tmp_path_factory.mktemp("h") / "t.npz"
    save(tree, path)
    assert_same(tree, load(path))


def test_path_kept_and_file_readable(tmp_path):
    path = tmp_path / "checkpoint"  # no .npz suffix gets appended
    save({"a": 1}, str(path))
    assert os.listdir(tmp_path) == ["checkpoint"]
    assert load(str(path)) == {"a": 1}
    assert os.stat(path).st_mode & 0o044  # not mkstemp's private 0600
    with zipfile.ZipFile(path) as z:  # a plain .npz underneath
        assert "__minidl__.npy" in z.namelist()


# ---- atomicity ----------------------------------------------------------------------

def _fail_fsync(fd):
    raise OSError("disk on fire")


def _fail_midway(original):
    calls = []

    def write_array(fp, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # one array already written: the temp file is half full
            raise KeyboardInterrupt
        return original(fp, array, *args, **kwargs)
    return write_array


@pytest.mark.parametrize("failure", ["fsync", "midway", "replace"])
def test_failed_save_keeps_old_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "ckpt.npz"
    save({"step": 1, "w": np.zeros(3)}, path)
    if failure == "fsync":
        monkeypatch.setattr(os, "fsync", _fail_fsync)
        expected = OSError
    elif failure == "midway":
        monkeypatch.setattr(np.lib.format, "write_array",
                            _fail_midway(np.lib.format.write_array))
        expected = KeyboardInterrupt
    else:
        def fail_replace(src, dst):
            raise OSError("rename failed")
        monkeypatch.setattr(os, "replace", fail_replace)
        expected = OSError
    with pytest.raises(expected):
        save({"step": 2, "w": np.ones(3), "v": np.ones(4)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temp file left behind
    out = load(path)
    assert out["step"] == 1 and np.array_equal(out["w"], np.zeros(3))


def test_unsupported_objects_fail_before_writing(tmp_path):
    path = tmp_path / "x.npz"
    with pytest.raises(TypeError, match=r"set at obj\['opt'\]\[0\]"):
        save({"opt": [{1, 2}]}, path)
    with pytest.raises(TypeError, match="would need pickle"):
        save({"a": np.array([object()])}, path)
    with pytest.raises(TypeError, match="dict key"):
        save({frozenset(): 1}, path)
    assert os.listdir(tmp_path) == []


# ---- loading bad files ----------------------------------------------------------------

def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load(tmp_path / "nope.npz")


def test_load_not_a_checkpoint(tmp_path):
    good = tmp_path / "good.npz"
    save({"w": np.arange(1000.0)}, good)
    data = good.read_bytes()
    cases = {
        "text.npz": b"hello, not a checkpoint\n",
        "empty.npz": b"",
        "truncated.npz": data[: len(data) // 2],
        "flipped.npz": data[:200] + bytes([data[200] ^ 0xFF]) + data[201:],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))        # an .npz, but not ours
    np.save(tmp_path / "array.npy", np.zeros(2))           # a .npy
    np.savez(tmp_path / "pickled.npz", __minidl__=np.array([{"x": 1}], dtype=object))
    for name in list(cases) + ["plain.npz", "array.npy", "pickled.npz"]:
        path = tmp_path / name
        with pytest.raises(CheckpointError) as info:
            load(path)
        assert str(path) in str(info.value), name


# ---- hostile files: bounded work, CheckpointError (issue 13 item 12) --------------------

def _npz_with_meta(path, meta_text, extra=None):
    import zipfile
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("__minidl__.npy", "w") as f:
            np.lib.format.write_array(f, np.frombuffer(meta_text.encode(), dtype=np.uint8))
        for name, raw in (extra or {}).items():
            zf.writestr(name, raw)


@pytest.mark.parametrize("depth", [900, 200_000])
def test_load_deeply_nested_metadata_is_a_checkpoint_error(tmp_path, depth):
    tree = '{"$": "list", "items": [' * depth + "]}" * depth
    meta = '{"format": "minidl-checkpoint", "version": 1, "tree": ' + tree + "}"
    _npz_with_meta(tmp_path / "deep.npz", meta)
    with pytest.raises(CheckpointError, match="deep.npz"):
        load(tmp_path / "deep.npz")


def test_load_member_claiming_a_tebibyte_is_refused_without_allocating(tmp_path):
    import io
    import tracemalloc
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (2 ** 40,)})
    meta = '{"format": "minidl-checkpoint", "version": 1, "tree": {"$": "array", "key": "a0"}}'
    _npz_with_meta(tmp_path / "huge.npz", meta, {"a0.npy": header.getvalue() + b"\0" * 64})
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"huge\.npz.*a0\.npy.*1099511627776"):
            load(tmp_path / "huge.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2 ** 20


def test_load_turns_memory_error_into_checkpoint_error(tmp_path, monkeypatch):
    save({"w": np.zeros(3)}, tmp_path / "c.npz")

    def no_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(np, "load", no_memory)
    with pytest.raises(CheckpointError, match="more memory"):
        load(tmp_path / "c.npz")

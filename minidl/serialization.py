"""`save(obj, path)` / `load(path)`: checkpoints without pickle.

A checkpoint is one .npz file: every array of `obj` is stored under its own key
("a0", "a1", ...) and the structure around them - dicts, lists, tuples, Python
scalars, strings, None - is described in JSON, stored as a uint8 array under
"__minidl__". Loading uses allow_pickle=False, so a checkpoint can be read from an
untrusted source without running code.

What round-trips:
    ndarray (any non-object dtype)     -> ndarray, bit-exact (dtype, shape, bytes)
    minidl Tensor                      -> ndarray (its .data)
    NumPy scalar (np.float32(1.5)...)  -> the same NumPy scalar type
    int (any size), float, bool, str, None -> themselves
    dict (keys: str, int, float, bool, None, or tuples of these), list, tuple
                                       -> the same container type (dict subclasses
                                          such as OrderedDict come back as dict)
NumPy generator states (`generator.bit_generator.state`) hold ints larger than 64
bits; JSON integers are unbounded, so they round-trip exactly.

Writing is atomic: the file is written to a temp file in the same directory,
flushed and fsync'ed, then renamed over `path` with os.replace. A crash at any
point leaves either the old checkpoint or the new one, never half of one.
"""

import json
import os
import zipfile

import numpy as np

from ._atomic import atomic_write

__all__ = ["save", "load", "CheckpointError"]

_META_KEY = "__minidl__"
_FORMAT = "minidl-checkpoint"
_VERSION = 1


class CheckpointError(ValueError):
    """The file exists but is not a readable minidl checkpoint."""


# ---- encoding: Python object -> (JSON tree, {key: array}) -------------------------

def _encode(obj, arrays, where):
    if obj is None or isinstance(obj, (bool, str)) and not isinstance(obj, np.generic):
        return obj
    if isinstance(obj, np.generic):            # before int/float: np.float64 is a float
        return {"$": "scalar", "key": _put(np.asarray(obj), arrays, where)}
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, np.ndarray):
        return {"$": "array", "key": _put(obj, arrays, where)}
    data = getattr(obj, "data", None)
    if isinstance(data, np.ndarray):           # a minidl Tensor (or anything alike)
        return {"$": "array", "key": _put(data, arrays, where)}
    if isinstance(obj, dict):
        keys, values = [], []
        for k, v in obj.items():
            keys.append(_encode_key(k, where))
            values.append(_encode(v, arrays, f"{where}[{k!r}]"))
        return {"$": "dict", "keys": keys, "values": values}
    if isinstance(obj, (list, tuple)):
        tag = "tuple" if isinstance(obj, tuple) else "list"
        return {"$": tag, "items": [_encode(v, arrays, f"{where}[{i}]")
                                    for i, v in enumerate(obj)]}
    raise TypeError(f"save: cannot store {type(obj).__name__} at {where}; supported are "
                    f"arrays, Tensors, Python/NumPy scalars, str, None, dict, list, tuple")


def _encode_key(key, where):
    if key is None or isinstance(key, (bool, int, float, str)) and not isinstance(key, np.generic):
        return key
    if isinstance(key, tuple):
        return {"$": "tuple", "items": [_encode_key(k, where) for k in key]}
    raise TypeError(f"save: unsupported dict key {key!r} ({type(key).__name__}) in {where}")


def _put(array, arrays, where):
    if array.dtype.hasobject:
        raise TypeError(f"save: array of dtype {array.dtype} at {where} would need pickle")
    key = f"a{len(arrays)}"
    arrays[key] = array
    return key


# ---- decoding: (JSON tree, arrays) -> Python object -------------------------------

def _decode(node, arrays):
    if not isinstance(node, dict):
        return node
    tag = node["$"]
    if tag == "array":
        return arrays[node["key"]]
    if tag == "scalar":
        return arrays[node["key"]][()]
    if tag == "list":
        return [_decode(v, arrays) for v in node["items"]]
    if tag == "tuple":
        return tuple(_decode(v, arrays) for v in node["items"])
    if tag == "dict":
        return {_decode(k, arrays): _decode(v, arrays)
                for k, v in zip(node["keys"], node["values"])}
    raise KeyError(f"unknown node type {tag!r}")


# ---- public API -------------------------------------------------------------------

def save(obj, path):
    """Write `obj` to `path` (a .npz file) atomically."""
    path = os.fspath(path)
    arrays = {}
    # Encode first: an unsupported object fails before anything touches the disk.
    tree = _encode(obj, arrays, "obj")
    meta = json.dumps({"format": _FORMAT, "version": _VERSION, "tree": tree})
    arrays[_META_KEY] = np.frombuffer(meta.encode("utf-8"), dtype=np.uint8)

    with atomic_write(path) as (f, _):
        np.savez(f, **arrays)  # no pickle needed: _put rejected object arrays


def _check_members(path):
    """Every member's size, from the zip directory and the .npy header alone, before any
    array is read: a member (or a header) claiming more bytes than the file holds is
    refused without allocating them."""
    from numpy.lib import format as npy
    file_size = os.path.getsize(path)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"member {info.filename!r} is compressed; minidl "
                                      f"checkpoints are stored uncompressed")
            if info.file_size > file_size:
                raise CheckpointError(f"member {info.filename!r} claims {info.file_size} "
                                      f"bytes, more than the whole file ({file_size})")
            with zf.open(info) as f:
                version = npy.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = npy.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = npy.read_array_header_2_0(f)
                else:
                    shape, _, dtype = npy._read_array_header(f, version)
                need = int(np.prod(shape, dtype=object)) * dtype.itemsize
                have = info.file_size - f.tell()
                if need != have and not dtype.hasobject:
                    raise CheckpointError(f"member {info.filename!r}: its header says "
                                          f"{shape} {dtype} ({need} bytes) but it holds "
                                          f"{have} bytes")


def load(path):
    """Read a checkpoint written by `save`.

    Anything that is not a readable minidl checkpoint raises CheckpointError (never
    pickle, never an unbounded allocation: member sizes are checked against the file
    before any array is read; absurdly nested metadata is refused too)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no such checkpoint file: {path!r}")
    try:
        if not zipfile.is_zipfile(path):
            raise CheckpointError("not an .npz (zip) file")
        _check_members(path)
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise CheckpointError("a .npy file, not an .npz")
        with npz:
            if _META_KEY not in npz.files:
                raise CheckpointError(f"an .npz without the {_META_KEY!r} entry")
            meta = json.loads(npz[_META_KEY].tobytes().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
                raise CheckpointError("unrecognized metadata")
            if meta.get("version") != _VERSION:
                raise CheckpointError(f"format version {meta.get('version')!r}; this "
                                      f"minidl reads version {_VERSION}")
            arrays = {k: npz[k] for k in npz.files if k != _META_KEY}
        return _decode(meta["tree"], arrays)
    except CheckpointError as e:
        raise CheckpointError(f"load: {path!r} is not a minidl checkpoint: {e}") from None
    except RecursionError:
        raise CheckpointError(f"load: {path!r} is not a minidl checkpoint: its metadata "
                              f"is nested too deeply") from None
    except MemoryError:
        raise CheckpointError(f"load: {path!r} is not a minidl checkpoint or is corrupt: "
                              f"reading it would need more memory than there is") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError, IndexError, AttributeError,
            zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CheckpointError(f"load: {path!r} is not a minidl checkpoint or is corrupt "
                              f"({type(e).__name__}: {e})") from None

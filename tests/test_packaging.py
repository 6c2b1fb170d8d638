"""Packaging: the wheel installs minidl's names only (its kernels and benchmarks ship as
minidl.kernels and minidl.benchmarks), and every package folder is listed in
pyproject.toml, so a new subpackage cannot be left out of a non-editable install."""
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _declared():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(cfg["packages"]), cfg["package-dir"]


def test_every_package_folder_is_declared():
    packages, dirs = _declared()
    found = set()
    for prefix, folder in (("minidl", "minidl"), ("minidl.kernels", "kernels"),
                           ("minidl.benchmarks", "benchmarks")):
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((prefix, *rel)))
    assert found == packages, (f"missing from pyproject.toml: {sorted(found - packages)}; "
                               f"listed but absent: {sorted(packages - found)}")
    assert dirs["minidl.kernels"] == "kernels" and dirs["minidl.benchmarks"] == "benchmarks"


@pytest.mark.slow
def test_wheel_installs_minidl_names_only(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("minidl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"minidl", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for module in ("minidl/kernels/cpu/conv2d_nhwc.py", "minidl/kernels/reference/conv2d.py",
                   "minidl/benchmarks/__init__.py"):
        assert module in names, module

"""docs/internals.md stays true: every ```python block runs, in order, in one namespace,
and every relative link points at a file or folder of the repository."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "internals.md"


def python_blocks(text):
    """(line number, code) of each ```python fenced block."""
    return [(text[:m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```\s*$", text, re.S | re.M)]


def test_guide_snippets_run(monkeypatch):
    text = GUIDE.read_text()
    blocks = python_blocks(text)
    assert len(blocks) >= 10, "the guide lost its runnable snippets"
    monkeypatch.chdir(ROOT)
    import minidl
    namespace = {"__name__": "internals_md"}
    try:
        for line, code in blocks:
            try:
                exec(compile(code, f"{GUIDE}:{line}", "exec"), namespace)
            except Exception as e:
                pytest.fail(f"docs/internals.md, the block at line {line} failed: "
                            f"{type(e).__name__}: {e}")
    finally:
        minidl.set_backend("numba")


def test_guide_links_resolve():
    text = GUIDE.read_text()
    links = re.findall(r"\]\((\.\./[^)#]+)\)", text)
    assert links
    missing = [link for link in links if not (GUIDE.parent / link).resolve().exists()]
    assert not missing, f"docs/internals.md links to missing files: {missing}"


def test_extractor_finds_blocks_in_order():
    text = "a\n```python\nx = 1\n```\n```text\nno\n```\n```python\ny = x + 1\n```\n"
    assert [code for _, code in python_blocks(text)] == ["x = 1\n", "y = x + 1\n"]

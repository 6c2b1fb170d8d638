"""The README's example must run and learn, so the front door never rots."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_trains(tmp_path, monkeypatch, capsys):
    code = re.search(r"## A tiny model in 20 lines\n\n```python\n(.*?)```", README.read_text(),
                     re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README example", "exec"), {})
    out = capsys.readouterr().out
    acc = float(re.search(r"train accuracy ([\d.]+)%", out).group(1))
    assert acc > 85, out
    assert (tmp_path / "tiny.npz").exists()


def test_readme_test_command_is_what_ci_runs():
    ci_last_line = (README.parent / ".ci" / "run").read_text().rstrip().splitlines()[-1]
    command = re.search(r"## Run the tests\n\n```bash\n(.*?)\n```", README.read_text(),
                        re.S).group(1).strip()
    assert ci_last_line == command

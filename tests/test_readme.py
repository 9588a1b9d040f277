"""The README's promises: its Python examples run, and it starts with the two commands."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_starts_with_setup_and_test_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert "pip install -e '.[dev]'" in blocks[0] and "vpindex run" in blocks[0]
    assert blocks[1].strip() == "python -m pytest -q"
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci.splitlines()[-1]

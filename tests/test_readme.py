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


def _commands_section() -> str:
    text = README.read_text()
    return text.split("## Commands", 1)[1].split("\n## ", 1)[0]


def test_every_command_and_scenario_is_in_the_command_table() -> None:
    import typer

    from vpindex.cli import app
    from vpindex.cli.run import SCENARIOS

    table = _commands_section()
    group = typer.main.get_command(app)
    names: list[str] = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        names.append(name)
        names += [f"{name} {sub}" for sub in getattr(command, "commands", {})]
    assert "run" in names and "bench calibrate" in names  # the walk finds nested commands
    rows = [line for line in table.splitlines() if line.startswith("| `")]

    def listed(name: str) -> bool:
        head, _, sub = name.partition(" ")
        own = [r for r in rows if r.startswith(f"| `vpindex {head}")]
        return bool(own) and (not sub or any(sub in re.split(r"(?<!\\)\|", r)[1] for r in own))

    missing = [n for n in names if not listed(n)]
    assert not missing, f"commands missing from the README's command table: {missing}"
    assert all(s in table for s in SCENARIOS)
    assert "python -m vpindex.backends.kvm.guests.hello" in table  # how to build the guest
    assert "python -m vpindex.fuzz" in table and "vpindex --version" in table

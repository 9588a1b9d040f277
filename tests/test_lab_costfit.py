"""vpindex.lab.costfit and ``vpindex bench calibrate``: the fit recovers a known model, the
constants module is regenerated in place, the command prints the table and writes nothing
unless asked (no timing assertions)."""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpindex.cli import commands  # noqa: F401  (registers the sub-commands)
from vpindex.cli.app import app
from vpindex.lab.costfit import (
    BEGIN_MARK,
    Point,
    _solve_least_squares,
    design_points,
    fit_model,
    model_block,
    report_lines,
    write_model,
)
from vpindex.vpmap import costs
from vpindex.vpmap.costs import MODEL, CostModel

TRUE = replace(
    MODEL,
    peel_fixed=420.0,
    peel_per_bit=0.08,
    peel_per_member=130.0,
    peel_per_member_bit=0.05,
    words_fixed=450.0,
    words_per_bit=0.6,
    words_per_member=180.0,
    flat_fixed=650.0,
    flat_per_bit=9.0,
    flat_per_member=33.0,
    bit_walk_fixed=740.0,
    bit_walk_per_bit=1.25,
    bit_walk_per_vcpu=15.0,
    byte_walk_fixed=1400.0,
    byte_walk_per_vcpu=29.0,
    walk_per_member=13.0,
)


def _cost(model: CostModel, p: Point) -> float:
    if p.regime != "walk":
        return model.lookup_cost(p.k, p.w)
    walk = model.bit_walk_cost(p.n, p.width) if p.table == "bits" else model.byte_walk_cost(p.n)
    return walk + model.walk_per_member * p.k


def test_fit_recovers_the_model_that_made_the_times() -> None:
    points = design_points()
    fit = fit_model(points, [_cost(TRUE, p) for p in points], machine="m", python="p")
    for f in fields(CostModel):
        want, got = getattr(TRUE, f.name), getattr(fit.model, f.name)
        if isinstance(want, float):
            assert math.isclose(got, want, rel_tol=1e-3), f.name
    assert max(fit.worst_miss.values()) < 1e-3
    assert (fit.model.machine, fit.model.python) == ("m", "p")


def test_fit_keeps_every_constant_nonnegative() -> None:
    points = design_points()
    # times that fall with the width: unconstrained, the per-bit terms come out negative
    ns = [_cost(TRUE, p) / (1 + p.w / 256) for p in points]
    words = [(p.features(), t) for p, t in zip(points, ns, strict=True) if p.regime == "words"]
    raw = _solve_least_squares([[x / t for x in row] for row, t in words], [1.0] * len(words))
    assert min(raw) < 0  # control
    model = fit_model(points, ns).model
    floats = [f.name for f in fields(CostModel) if f.type == "float"]
    assert len(floats) == 16 and all(getattr(model, name) >= 0 for name in floats)


def test_write_model_regenerates_the_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "costs_copy.py"
    target.write_text(Path(costs.__file__).read_text(encoding="utf-8"), encoding="utf-8")
    new = replace(TRUE, machine='a "quoted" host', python="CPython 3.x", fitted="2030-01-01")
    write_model(new, target)
    text = target.read_text(encoding="utf-8")
    assert text.count(BEGIN_MARK) == 1 and model_block(new) in text
    spec = importlib.util.spec_from_file_location("costs_copy", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "costs_copy", module)  # dataclasses look it up there
    spec.loader.exec_module(module)
    assert asdict(module.MODEL) == asdict(new)  # the copy has its own CostModel class
    bad = tmp_path / "nomarks.py"
    bad.write_text("MODEL = None\n", encoding="utf-8")
    with pytest.raises(ValueError, match="BEGIN fitted"):
        write_model(new, bad)


def test_report_fits_80_columns() -> None:
    points = design_points()
    fit = fit_model(points, [_cost(TRUE, p) for p in points], machine="x" * 60)
    lines = report_lines(fit)
    assert any(line.startswith("peel_fixed") for line in lines)
    assert max(map(len, lines)) <= 80


def test_cli_bench_calibrate_prints_and_does_not_write() -> None:
    path = Path(costs.__file__)
    before = path.read_bytes()
    result = CliRunner().invoke(
        app, ["bench", "calibrate", "--repeat", "1", "--sample-ms", "0.1"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "walk_from for the maps of docs/DESIGN.md" in result.output
    assert "MODEL: Final = CostModel(" in result.output and "not written" in result.output
    assert path.read_bytes() == before


def test_cli_bench_calibrate_rejects_bad_options() -> None:
    result = CliRunner().invoke(app, ["bench", "calibrate", "--repeat", "0"])
    assert result.exit_code == 2


def test_cli_bench_calibrate_write_failure_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vpindex.lab import costfit

    def refuse(model: CostModel, path: Path) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(costfit, "write_model", refuse)
    result = CliRunner().invoke(
        app, ["bench", "calibrate", "--repeat", "1", "--sample-ms", "0.1", "--write"]
    )
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: --write: cannot rewrite")
    assert "Traceback" not in result.output

"""vpindex.lab timing harness, sweep cells, JSON schema and ``vpindex bench`` (no timing
assertions: speed claims live in benchmarks/ and docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpindex.abi import VpSet
from vpindex.cli.app import app
from vpindex.lab.fixtures import encode_variant
from vpindex.lab.grid import DEFAULT_VARIANTS, Cell, SweepConfig, parse_targets, target_count
from vpindex.lab.ranking import rank
from vpindex.lab.records import CellResult
from vpindex.lab.report import SCHEMA, evaluate_goals, sweep_to_json
from vpindex.lab.sweep import make_cells, run_sweep
from vpindex.lab.timing import Timing, calibrate, measure, measure_interleaved, quartiles

PNG = b"\x89PNG\r\n\x1a\n"


# -- harness math -----------------------------------------------------------------------------


def test_quartiles() -> None:
    assert quartiles([5, 1, 3, 2, 4]) == (2.0, 3.0, 4.0)
    assert quartiles([7.0]) == (7.0, 7.0, 7.0)
    assert quartiles([1, 3]) == (1.5, 2.0, 2.5)
    with pytest.raises(ValueError):
        quartiles([])


def test_timing_summary() -> None:
    t = Timing(loops=10, calls_per_loop=2, samples=(10.0, 12.0, 11.0, 30.0, 9.0))
    assert t.median == 11.0
    assert (t.q1, t.q3) == (10.0, 12.0)
    assert (t.min, t.max) == (9.0, 30.0)
    assert t.spread == pytest.approx(2 / 11)
    doc = t.to_json()
    assert doc["repeats"] == 5 and doc["median_ns"] == 11.0 and doc["samples_ns"][3] == 30.0
    assert set(doc) == {
        "loops", "calls_per_loop", "repeats", "median_ns", "q1_ns", "q3_ns", "min_ns",
        "max_ns", "samples_ns",
    }  # fmt: skip


def _fake(ns_per_loop: int, log: list[int] | None = None, tag: int = 0):  # type: ignore[no-untyped-def]
    def body(loops: int) -> int:
        if log is not None:
            log.append(tag)
        return loops * ns_per_loop

    return body


def test_calibrate_reaches_target() -> None:
    loops, elapsed = calibrate(_fake(1000), target_ns=1_000_000)
    assert elapsed >= 1_000_000 and loops * 1000 == elapsed
    # never beyond max_loops
    loops, _ = calibrate(_fake(1), target_ns=10**9, max_loops=500)
    assert loops == 500


def test_measure_divides_by_loops_and_calls() -> None:
    t = measure(_fake(1000), repeat=4, target_ns=100_000, calls_per_loop=4)
    assert t.samples == (250.0,) * 4
    assert t.median == 250.0 and t.loops >= 100


def test_measure_budget_limits_slow_cells() -> None:
    slow = _fake(10**9)  # one loop = 1 s (fake clock)
    t = measure(slow, repeat=10, target_ns=1000, budget_ns=2 * 10**9, min_repeat=3)
    assert t.loops == 1 and len(t.samples) == 3


def test_measure_interleaved_round_robin() -> None:
    log: list[int] = []
    bodies = [_fake(100, log, 0), _fake(200, log, 1)]
    ts = measure_interleaved(bodies, repeat=3, target_ns=10_000, warmup=0)
    assert [t.median for t in ts] == [100.0, 200.0]
    tail = log[-6:]
    assert tail == [0, 1, 0, 1, 0, 1]


# -- sweep cells --------------------------------------------------------------------------------


def test_parse_targets_and_counts() -> None:
    assert parse_targets("1,1/8,all") == ("1", "1/8", "all")
    assert parse_targets(" 4 , 4, all") == ("4", "all")
    for bad in ("0", "x", "1/0", "", "-1"):
        with pytest.raises(ValueError):
            parse_targets(bad)
    assert [target_count(t, 8) for t in ("1", "1/8", "all", "100")] == [1, 1, 8, 8]
    assert [target_count(t, 4096) for t in ("1", "1/8", "all")] == [1, 512, 4096]
    assert target_count("1/8", 1) == 1


def test_make_cells_grid() -> None:
    cfg = SweepConfig(
        strategies=("adaptive", "dense"), vcpus=(8, 64), mappings=("identity",), ops=("resolve",)
    )
    cells = make_cells(cfg)
    # N=8: "1" and "1/8" are both one VP (deduplicated); N=64: 1, 8, 64
    assert len(cells) == 2 * (2 + 3)
    assert {(c.n, c.targets, c.k) for c in cells} == {
        (8, "1", 1), (8, "all", 8), (64, "1", 1), (64, "1/8", 8), (64, "all", 64),
    }  # fmt: skip
    cfg.ops = ("vcpu_of", "update")
    cells = make_cells(cfg)
    assert len(cells) == 2 * 2 * (1 + 2)
    cfg.vcpus = (4096,)
    assert {c.variant for c in make_cells(cfg) if c.op == "update"} == {"assign"}


def test_make_cells_hypercall_variants() -> None:
    cfg = SweepConfig(
        strategies=("adaptive",), vcpus=(8,), mappings=("identity",), ops=("hypercall",)
    )
    cells = make_cells(cfg)
    assert {c.variant for c in cells} == set(DEFAULT_VARIANTS)
    cfg.mappings = ("sparse",)
    cfg.vcpus = (1024,)
    variants = {c.variant for c in make_cells(cfg) if c.targets == "all"}
    assert "ipi/non-ex/fast" not in variants and "ipi/ex/slow" in variants


def test_encode_variant() -> None:
    low, high = VpSet.of([1, 5]), VpSet.of([1, 70])
    assert encode_variant("ipi/non-ex/fast", low) is not None
    assert encode_variant("ipi/non-ex/fast", high) is None
    call = encode_variant("flush-list/ex/slow", high)
    assert call is not None and call.input is not None
    assert encode_variant("flush-space/ex/xmm", VpSet.of(range(0, 4096, 64))) is None


def test_rank_marks_best() -> None:
    a = Cell("resolve", "identity", 8, "1", 1, "adaptive")
    d = Cell("resolve", "identity", 8, "1", 1, "dense")
    ranked = rank([CellResult(a, Timing(1, 1, (100.0,))), CellResult(d, Timing(1, 1, (150.0,)))])
    assert [(r.best, r.ratio) for r in ranked] == [(True, 1.0), (False, 1.5)]


def _tiny() -> SweepConfig:
    return SweepConfig(
        strategies=("adaptive", "dense", "scan"),
        vcpus=(8, 128),
        mappings=("identity", "sparse"),
        variants=("flush-space/ex/slow", "ipi/non-ex/fast"),
        repeat=1,
        target_ns=100_000,
    )


def test_sweep_json_schema() -> None:
    sweep = run_sweep(_tiny())
    doc = json.loads(json.dumps(sweep_to_json(sweep)))
    assert doc["schema"] == SCHEMA
    assert set(doc) == {
        "schema", "created", "machine", "method", "config", "elapsed_s", "results", "memory",
        "goals",
    }  # fmt: skip
    assert {"python", "cpu", "cpu_count", "platform", "implementation"} <= set(doc["machine"])
    row = doc["results"][0]
    assert {
        "op", "mapping", "n", "targets", "k", "strategy", "variant", "loops", "calls_per_loop",
        "repeats", "median_ns", "q1_ns", "q3_ns", "min_ns", "max_ns", "samples_ns",
        "ratio_to_best", "ratio_min_to_best", "best",
    } == set(row)  # fmt: skip
    assert {r["op"] for r in doc["results"]} == {"resolve", "vcpu_of", "hypercall", "update"}
    assert set(doc["memory"][0]) == {"strategy", "mapping", "n", "max_vp_index", "nbytes"}
    assert len(doc["memory"]) == 3 * 2 * 2
    groups: dict[tuple[object, ...], list[dict[str, object]]] = {}
    for r in doc["results"]:
        key = (r["op"], r["mapping"], r["n"], r["targets"], r["variant"])
        groups.setdefault(key, []).append(r)
    for rows in groups.values():
        assert sum(bool(r["best"]) for r in rows) >= 1
        assert min(float(r["ratio_to_best"]) for r in rows) == 1.0  # type: ignore[arg-type]
    goals = evaluate_goals(sweep)
    assert len(goals) == 5
    assert [g["name"] for g in doc["goals"]] == [g.name for g in goals]
    # N=128 one target, memory at N=8, and the 128-target flush all have data here
    assert goals[2].met is not None and goals[3].met is not None and goals[4].met is not None


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_bench_quick_json_and_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    result = CliRunner().invoke(
        app,
        [
            "bench", "--quick", "--vcpus", "8", "--strategies", "adaptive,dense",
            "--sample-ms", "1", "--op", "resolve,vcpu_of", "--json", str(out), "--plot", str(png),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["config"]["vcpus"] == [8] and doc["config"]["repeat"] == 3
    assert {r["strategy"] for r in doc["results"]} == {"adaptive", "dense"}
    assert png.read_bytes()[:8] == PNG
    assert (tmp_path / "b-memory.png").read_bytes()[:8] == PNG
    assert (tmp_path / "b-vcpu_of.png").exists()
    assert "resolve" in result.output and "goals" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--strategies", "bogus"],
        ["--mapping", "dense"],
        ["--op", "nope"],
        ["--targets", "0"],
        ["--vcpus", "5000"],
    ],
)
def test_cli_bench_rejects_bad_options(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["bench", "--quick", *args])
    assert result.exit_code == 2


def test_markdown_fill_keeps_prose() -> None:
    from vpindex.lab.markdown import SECTIONS, fill

    doc = sweep_to_json(run_sweep(_tiny()))
    text = (
        "intro\n<!-- BEGIN goals -->\nold\n<!-- END goals -->\n"
        "middle\n<!-- BEGIN x -->\nk\n<!-- END x -->\n"
    )
    out = fill(text, doc)
    assert out.startswith("intro\n<!-- BEGIN goals -->\n| goal |") and "old" not in out
    assert "middle\n<!-- BEGIN x -->\nk\n<!-- END x -->" in out
    for render in SECTIONS.values():
        assert isinstance(render(doc), str)

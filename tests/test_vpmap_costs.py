"""The adaptive map's cost model (vpindex.vpmap.costs): the closed forms equal the step-by-step
definitions, snapshots take their thresholds from the model, the lazy index builds on any
first read, and docs/DESIGN.md's crossover table is what the model computes."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

import pytest

from vpindex.abi import VpSet
from vpindex.abi.bits import PEEL_LIMIT, word_path
from vpindex.lab.costfit import CrossoverRow, crossover_rows
from vpindex.vpmap import AdaptiveMap
from vpindex.vpmap.adaptive import _held_mask
from vpindex.vpmap.costs import MODEL, CostModel

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md"

#: A model with other proportions than MODEL, so each test runs on two models.
OTHER = replace(
    MODEL,
    peel_fixed=500.0,
    peel_per_bit=0.09,
    peel_per_member=140.0,
    peel_per_member_bit=0.045,
    words_per_member=180.0,
    flat_per_bit=9.0,
    walk_per_member=13.0,
)


def _walk_from_by_steps(model: CostModel, n: int, w: int, walk: float, start: int = 2) -> int:
    """The definition: try k = start, start + 1, ... while the lookup is still cheaper."""
    k = start
    while k < n and model.lookup_cost(k, w) < walk + model.walk_per_member * k:
        k += 1
    return k


@pytest.mark.parametrize("model", [MODEL, OTHER], ids=["MODEL", "other"])
def test_walk_from_closed_form_equals_the_steps(model: CostModel) -> None:
    rng = random.Random(11)
    answers = []
    for _ in range(1500):
        n = rng.choice([1, 2, 3, rng.randint(4, 64), rng.randint(65, 4096)])
        w = rng.randint(1, 4096)
        walk = rng.uniform(0, 1.5) * model.lookup_cost(max(2, n // rng.randint(1, 16)), w)
        want = _walk_from_by_steps(model, n, w, walk)
        assert model.walk_from(n, w, walk) == want, (n, w, walk)
        start = rng.choice([PEEL_LIMIT + 1, rng.randint(3, 300)])
        want_above = _walk_from_by_steps(model, n, w, walk, start)
        assert model.walk_from(n, w, walk, start) == want_above, (n, w, walk, start)
        answers.append((want, n, w))
    # control: the cases reach every regime's range and the "never" answer
    assert any(2 < k <= PEEL_LIMIT < n for k, n, _ in answers)
    assert any(PEEL_LIMIT < k < n and word_path(k, w) for k, n, w in answers)
    assert any(PEEL_LIMIT < k < n and not word_path(k, w) for k, n, w in answers)
    assert any(k == n > PEEL_LIMIT for k, n, _ in answers)


@pytest.mark.parametrize("model", [MODEL, OTHER], ids=["MODEL", "other"])
def test_peel_widths_are_where_peeling_stops_winning(model: CostModel) -> None:
    for walk in (0.0, 800.0, 3000.0, 9000.0, 60000.0):
        widths = model.peel_widths(walk)
        assert len(widths) == PEEL_LIMIT + 1
        for k in range(2, PEEL_LIMIT + 1):
            w = widths[k]
            walks_at = model.lookup_cost(k, w) >= walk + model.walk_per_member * k
            assert walks_at or w == 1 << 30, (walk, k, w)
            if w > 0:
                assert model.lookup_cost(k, w - 1) < walk + model.walk_per_member * k


def test_snapshots_take_their_thresholds_from_the_model() -> None:
    rng = random.Random(3)
    for n in (1, 8, 64, 300, 2048):
        m = AdaptiveMap(n)
        m.assign(dict(enumerate(rng.sample(range(4096), n))))
        snap = m._index()
        width = max(snap.vp_of) + 1
        bits, byte = MODEL.bit_walk_cost(n, width), MODEL.byte_walk_cost(n)
        assert snap.walker.table == ("bytes" if byte < bits else "bits")
        assert snap.walker.cost == min(bits, byte)
        assert snap.walk_from == MODEL.walk_from(n, width, snap.walker.cost)
        assert snap.walk_above == MODEL.walk_from(n, width, snap.walker.cost, PEEL_LIMIT + 1)
        assert snap.peel_widths == MODEL.peel_widths(snap.walker.cost)


def test_held_mask_both_ways() -> None:
    rng = random.Random(5)
    for n, width in ((1, 1), (3, 4096), (64, 4096), (511, 4096), (512, 4096), (700, 1000)):
        vp_of = (width - 1, *rng.sample(range(width - 1), n - 1))
        assert _held_mask(vp_of, width) == sum(1 << vp for vp in vp_of)


@pytest.mark.parametrize("first", ["resolve", "vcpu_of", "nbytes", "mapping"])
def test_the_first_read_after_an_update_builds_the_index(first: str) -> None:
    m = AdaptiveMap(64)
    m.assign({0: 100, 63: 4000})
    snap = m._snap
    with pytest.raises(AttributeError):
        _ = snap.identity  # published without its index
    if first == "resolve":
        assert m.resolve(VpSet.of([100, 4000, 5])) == {0, 63, 5}
    elif first == "vcpu_of":
        assert m.vcpu_of(4000) == 63 and m.vcpu_of(0) is None
    elif first == "nbytes":
        assert m.nbytes() > 0
    else:
        assert m.mapping()[63] == 4000
    if first == "mapping":  # reads vp_of only: the index stays unbuilt
        with pytest.raises(AttributeError):
            _ = snap.identity
    else:
        assert snap.identity is False and snap.vcpu_at[100] == 0
    assert m.resolve(VpSet.of([100, 4000])) == {0, 63}
    assert m.vcpu_of(100) == 0


# -- docs/DESIGN.md ------------------------------------------------------------------------


def _design_crossover() -> dict[tuple[int, str], tuple[str, str, str]]:
    """(n, mapping) -> the walk table, `walk_from` and `walk_above` cells of DESIGN.md's
    crossover table."""
    text = DESIGN.read_text(encoding="utf-8")
    section = text.split("### Measured crossover", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    names = ("n", "mapping", "walk table", "`walk_from`", "`walk_above`")
    col = {name: head.index(name) for name in names}
    out = {}
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        key = (int(cells[col["n"]]), cells[col["mapping"]])
        out[key] = (cells[col["walk table"]], cells[col["`walk_from`"]], cells[col["`walk_above`"]])
    return out


def _as_table(rows: list[CrossoverRow]) -> dict[tuple[int, str], tuple[str, str, str]]:
    return {(r.n, r.mapping): (r.table, f"{r.walk_from} ({r.fraction()})", r.above()) for r in rows}


def test_design_crossover_table_is_what_the_model_computes() -> None:
    documented = _design_crossover()
    assert documented == _as_table(crossover_rows(MODEL))
    # control: another model gives another table, so the comparison can fail
    assert documented != _as_table(crossover_rows(OTHER))


def test_design_states_the_models_constants() -> None:
    text = re.sub(r"\s+", " ", DESIGN.read_text(encoding="utf-8"))
    for line in MODEL.formulas():
        assert line in text, line
    assert f"fitted {MODEL.fitted}" in text and MODEL.python in text
    assert any(line not in text for line in OTHER.formulas())  # control

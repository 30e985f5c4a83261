"""Assignment: GrowthBook's hash, bucket ranges, namespaces; stickiness and spread.

The vectors below are GrowthBook's published SDK test cases (``tests/cases.json``
of github.com/growthbook/growthbook-python, spec version 0.7.1, MIT licence).
"""

from __future__ import annotations

from collections import Counter

import attrs
import pytest

from actors.experiments.hashing import (
    assign,
    bucket_ranges,
    choose_variant,
    equal_weights,
    hash_unit,
    in_namespace,
    phase_seed,
    unit_for,
)
from actors.experiments.model import Experiment, Metric, MetricName, Variant

# (seed, value, version, expected)
HASH_CASES = [
    ("", "a", 1, 0.22),
    ("", "b", 1, 0.077),
    ("b", "a", 1, 0.946),
    ("ef", "d", 1, 0.652),
    ("asdf", "8952klfjas09ujk", 1, 0.549),
    ("", "123", 1, 0.011),
    ("", '___)((*":&', 1, 0.563),
    ("seed", "a", 2, 0.0505),
    ("seed", "b", 2, 0.2696),
    ("foo", "ab", 2, 0.2575),
    ("foo", "def", 2, 0.2019),
    ("89123klj", "8952klfjas09ujkasdf", 2, 0.124),
    ("90850943850283058242805", "123", 2, 0.7516),
    ("()**(%$##$%#$#", '___)((*":&', 2, 0.0128),
]

# (name, (n_variants, coverage, weights), expected ranges)
BUCKET_RANGE_CASES = [
    ("normal 50/50", (2, 1, None), [(0, 0.5), (0.5, 1)]),
    ("reduced coverage", (2, 0.5, None), [(0, 0.25), (0.5, 0.75)]),
    ("zero coverage", (2, 0, None), [(0, 0), (0.5, 0.5)]),
    ("4 variations", (4, 1, None), [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)]),
    ("uneven weights", (2, 1, [0.4, 0.6]), [(0, 0.4), (0.4, 1)]),
    ("uneven weights, 3 variations", (3, 1, [0.2, 0.3, 0.5]), [(0, 0.2), (0.2, 0.5), (0.5, 1)]),
    (
        "uneven weights, reduced coverage, 3 variations",
        (3, 0.2, [0.2, 0.3, 0.5]),
        [(0, 0.04), (0.2, 0.26), (0.5, 0.6)],
    ),
    ("negative coverage", (2, -0.2, None), [(0, 0), (0.5, 0.5)]),
    ("coverage above 1", (2, 1.5, None), [(0, 0.5), (0.5, 1)]),
    ("weights sum below 1", (2, 1, [0.4, 0.1]), [(0, 0.5), (0.5, 1)]),
    ("weights sum above 1", (2, 1, [0.7, 0.6]), [(0, 0.5), (0.5, 1)]),
    (
        "weights.length not equal to num variations",
        (4, 1, [0.4, 0.4, 0.2]),
        [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)],
    ),
    ("weights sum almost equals 1", (2, 1, [0.4, 0.5999]), [(0, 0.4), (0.4, 0.9999)]),
]

# (name, n, ranges, expected index)
CHOOSE_VARIATION_CASES = [
    ("even range, 0.2", 0.2, [(0, 0.5), (0.5, 1)], 0),
    ("even range, 0.4", 0.4, [(0, 0.5), (0.5, 1)], 0),
    ("even range, 0.6", 0.6, [(0, 0.5), (0.5, 1)], 1),
    ("even range, 0.8", 0.8, [(0, 0.5), (0.5, 1)], 1),
    ("even range, 0", 0, [(0, 0.5), (0.5, 1)], 0),
    ("even range, 0.5", 0.5, [(0, 0.5), (0.5, 1)], 1),
    ("reduced range, 0.2", 0.2, [(0, 0.25), (0.5, 0.75)], 0),
    ("reduced range, 0.4", 0.4, [(0, 0.25), (0.5, 0.75)], -1),
    ("reduced range, 0.6", 0.6, [(0, 0.25), (0.5, 0.75)], 1),
    ("reduced range, 0.8", 0.8, [(0, 0.25), (0.5, 0.75)], -1),
    ("reduced range, 0.25", 0.25, [(0, 0.25), (0.5, 0.75)], -1),
    ("reduced range, 0.5", 0.5, [(0, 0.25), (0.5, 0.75)], 1),
    ("zero range", 0.5, [(0, 0.5), (0.5, 0.5), (0.5, 1)], 2),
]

# (name, unit, namespace, expected)
IN_NAMESPACE_CASES = [
    ("user 1, namespace1, 1", "1", ("namespace1", 0, 0.4), False),
    ("user 1, namespace1, 2", "1", ("namespace1", 0.4, 1), True),
    ("user 1, namespace2, 1", "1", ("namespace2", 0, 0.4), False),
    ("user 1, namespace2, 2", "1", ("namespace2", 0.4, 1), True),
    ("user 2, namespace1, 1", "2", ("namespace1", 0, 0.4), False),
    ("user 2, namespace1, 2", "2", ("namespace1", 0.4, 1), True),
    ("user 2, namespace2, 1", "2", ("namespace2", 0, 0.4), False),
    ("user 2, namespace2, 2", "2", ("namespace2", 0.4, 1), True),
    ("user 3, namespace1, 1", "3", ("namespace1", 0, 0.4), False),
    ("user 3, namespace1, 2", "3", ("namespace1", 0.4, 1), True),
    ("user 3, namespace2, 1", "3", ("namespace2", 0, 0.4), True),
    ("user 3, namespace2, 2", "3", ("namespace2", 0.4, 1), False),
    ("user 4, namespace1, 1", "4", ("namespace1", 0, 0.4), False),
    ("user 4, namespace1, 2", "4", ("namespace1", 0.4, 1), True),
    ("user 4, namespace2, 1", "4", ("namespace2", 0, 0.4), True),
    ("user 4, namespace2, 2", "4", ("namespace2", 0.4, 1), False),
]

# (n_variants, expected)
EQUAL_WEIGHTS_CASES = [
    (-1, []),
    (0, []),
    (1, [1]),
    (2, [0.5, 0.5]),
    (3, [0.33333333, 0.33333333, 0.33333333]),
    (4, [0.25, 0.25, 0.25, 0.25]),
]

# The "run" cases that hash with version 2: (seed, unit, weights, coverage, index).
RUN_V2_CASES = [
    ("foo", "1", None, 1.0, 1),  # "Uses seed with default weights/coverage"
    ("foo", "1", [0.5, 0.5], 0.99, 1),  # "Uses seed with weights/coverage"
]


@pytest.mark.parametrize(("seed", "value", "version", "expected"), HASH_CASES)
def test_hash_vectors(seed: str, value: str, version: int, expected: float) -> None:
    assert hash_unit(seed, value, version) == expected


def test_unknown_hash_version_is_refused() -> None:
    # GrowthBook's vector ("abc", "def", 99) -> null: no such hash.
    with pytest.raises(ValueError, match="99"):
        hash_unit("abc", "def", 99)


@pytest.mark.parametrize(
    ("name", "args", "expected"), BUCKET_RANGE_CASES, ids=[c[0] for c in BUCKET_RANGE_CASES]
)
def test_bucket_range_vectors(
    name: str, args: tuple[int, float, list[float] | None], expected: list[tuple[float, float]]
) -> None:
    ranges = bucket_ranges(*args)
    assert len(ranges) == len(expected)
    for got, want in zip(ranges, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize(
    ("name", "n", "ranges", "expected"),
    CHOOSE_VARIATION_CASES,
    ids=[c[0] for c in CHOOSE_VARIATION_CASES],
)
def test_choose_variant_vectors(
    name: str, n: float, ranges: list[tuple[float, float]], expected: int
) -> None:
    assert choose_variant(n, ranges) == expected


@pytest.mark.parametrize(
    ("name", "unit", "namespace", "expected"),
    IN_NAMESPACE_CASES,
    ids=[c[0] for c in IN_NAMESPACE_CASES],
)
def test_in_namespace_vectors(
    name: str, unit: str, namespace: tuple[str, float, float], expected: bool
) -> None:
    assert in_namespace(unit, namespace) is expected


@pytest.mark.parametrize(("n", "expected"), EQUAL_WEIGHTS_CASES)
def test_equal_weights_vectors(n: int, expected: list[float]) -> None:
    assert equal_weights(n) == pytest.approx(expected, abs=1e-8)


def _experiment(*weights: float, **changes: object) -> Experiment:
    variants = [
        Variant(id=chr(ord("A") + i), model=f"model-{i}", weight=w) for i, w in enumerate(weights)
    ]
    experiment = Experiment(
        id="exp_0123456789abcdef",
        name="test",
        variants=variants,
        metrics=[Metric(MetricName.SUCCESS_RATE)],
    )
    return attrs.evolve(experiment, **changes)


@pytest.mark.parametrize(("seed", "unit", "weights", "coverage", "index"), RUN_V2_CASES)
def test_assign_matches_growthbook_run_vectors(
    seed: str, unit: str, weights: list[float] | None, coverage: float, index: int
) -> None:
    experiment = _experiment(*(weights or [1, 1]), seed=seed, coverage=coverage)
    variant = assign(experiment, unit)
    assert variant is not None
    assert variant.id == experiment.variants[index].id


def test_seed_defaults_to_the_id_and_gains_the_phase() -> None:
    experiment = _experiment(1, 1)
    assert phase_seed(experiment) == experiment.id
    assert phase_seed(attrs.evolve(experiment, seed="s")) == "s"
    assert phase_seed(attrs.evolve(experiment, seed="s", phase=2)) == "s:2"
    # Phase 0 is exactly GrowthBook's assignment with that seed.
    for unit in ("u1", "u2", "u3", "u4"):
        variant = assign(experiment, unit)
        index = choose_variant(hash_unit(experiment.id, unit), bucket_ranges(2))
        assert variant is experiment.variants[index]


def test_unit_falls_back_to_the_key_then_the_job() -> None:
    assert unit_for("alice", "key_1", "job_1") == "alice"
    assert unit_for(None, "key_1", "job_1") == "key:key_1"
    assert unit_for("", None, "job_1") == "job:job_1"


def test_a_unit_always_gets_the_same_variant() -> None:
    experiment = _experiment(1, 1, 1)
    first = {unit: assign(experiment, unit) for unit in (f"user-{i}" for i in range(500))}
    # A fresh copy (as after a restart, read back from the store) agrees.
    again = attrs.evolve(experiment, variants=[attrs.evolve(v) for v in experiment.variants])
    for unit, variant in first.items():
        assert assign(experiment, unit) == variant
        assert assign(again, unit) == variant


UNITS = [f"user-{i}" for i in range(100_000)]


def _shares(experiment: Experiment) -> Counter[str | None]:
    counts: Counter[str | None] = Counter()
    for unit in UNITS:
        variant = assign(experiment, unit)
        counts[variant.id if variant else None] += 1
    return counts


def test_units_spread_as_the_weights_say() -> None:
    counts = _shares(_experiment(2, 3, 5))
    assert counts[None] == 0
    for variant_id, share in (("A", 0.2), ("B", 0.3), ("C", 0.5)):
        # 100k units: one standard deviation of a share is at most 0.0016.
        assert counts[variant_id] / len(UNITS) == pytest.approx(share, abs=0.01)


def test_coverage_leaves_the_rest_out_in_proportion() -> None:
    counts = _shares(_experiment(1, 3, coverage=0.4))
    assert counts[None] / len(UNITS) == pytest.approx(0.6, abs=0.01)
    assert counts["A"] / len(UNITS) == pytest.approx(0.1, abs=0.01)
    assert counts["B"] / len(UNITS) == pytest.approx(0.3, abs=0.01)


def _moved(before: Experiment, after: Experiment, units: list[str]) -> float:
    moved = sum(
        (assign(before, unit) or Variant("-", "-")).id
        != (assign(after, unit) or Variant("-", "-")).id
        for unit in units
    )
    return moved / len(units)


def test_changing_weights_moves_units_only_with_a_new_phase() -> None:
    units = UNITS[:20_000]
    before = _experiment(1, 1)
    reweighted = _experiment(3, 2)  # 50/50 -> 60/40, same phase
    # Within a phase a unit's hash is fixed: only the units between the old and
    # the new boundary (hash in [0.5, 0.6)) change, all of them from B to A.
    for unit in units:
        old, new = assign(before, unit), assign(reweighted, unit)
        assert old is not None and new is not None
        if old.id != new.id:
            assert (old.id, new.id) == ("B", "A")
            assert 0.5 <= hash_unit(phase_seed(before), unit) < 0.6
    assert _moved(before, reweighted, units) == pytest.approx(0.1, abs=0.01)
    # A new phase re-buckets every unit not yet assigned, independently of before:
    # at 60/40 a unit keeps its letter with chance 0.5 * 0.6 + 0.5 * 0.4 = 0.5.
    new_phase = attrs.evolve(reweighted, phase=1)
    assert _moved(before, new_phase, units) == pytest.approx(0.5, abs=0.02)


def test_adding_a_variant_moves_units_only_with_a_new_phase() -> None:
    units = UNITS[:20_000]
    before = _experiment(1, 1)
    added = _experiment(1, 1, 1)
    # Same phase: A keeps [0, 1/3); [1/3, 1/2) goes A -> B, [2/3, 1) B -> C.
    assert _moved(before, added, units) == pytest.approx(1 / 6 + 1 / 3, abs=0.015)
    for unit in units:
        old, new = assign(before, unit), assign(added, unit)
        assert old is not None and new is not None
        assert (old.id, new.id) in {("A", "A"), ("A", "B"), ("B", "B"), ("B", "C")}
    # New phase: a fresh draw; a unit keeps A or B with chance 1/2 * 1/3 * 2.
    assert _moved(before, attrs.evolve(added, phase=1), units) == pytest.approx(2 / 3, abs=0.02)


def test_paused_variants_take_no_new_units() -> None:
    experiment = _experiment(1, 1, 1)
    experiment.variants[1] = attrs.evolve(experiment.variants[1], paused=True)
    counts = _shares(experiment)
    assert counts["B"] == 0
    assert counts["A"] / len(UNITS) == pytest.approx(0.5, abs=0.01)
    experiment.variants[:] = [attrs.evolve(v, paused=True) for v in experiment.variants]
    assert assign(experiment, "anyone") is None


def test_a_namespace_keeps_its_experiments_apart() -> None:
    left = _experiment(1, 1, namespace="homepage", namespace_range=(0.0, 0.3))
    right = _experiment(1, 1, id="exp_other", namespace="homepage", namespace_range=(0.3, 1.0))
    units = UNITS[:20_000]
    in_left = {unit for unit in units if assign(left, unit) is not None}
    in_right = {unit for unit in units if assign(right, unit) is not None}
    assert not in_left & in_right
    assert len(in_left | in_right) == len(units)
    assert len(in_left) / len(units) == pytest.approx(0.3, abs=0.015)

"""Multivariate tests: full and fractional expansion, and main effects on planted data."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from actors.errors import EaselError
from actors.experiments.factorial import MAX_VARIANTS, expand, main_effects, variant_letter
from actors.experiments.model import ArmMetric, MetricName, Variant

SUCCESS = MetricName.SUCCESS_RATE
COST = MetricName.COST


def test_a_full_factorial_has_every_combination() -> None:
    variants = expand(
        {
            "model": ["flux-dev", "flux-pro"],
            "parameters.duration": ["5", "10"],
            "prompt_template": ["{prompt}", "{prompt}, cinematic"],
        },
        parameters={"aspect_ratio": "16:9"},
    )
    assert [v.id for v in variants] == list("ABCDEFGH")
    combos = {tuple(v.factors.values()) for v in variants}
    assert combos == set(
        itertools.product(
            ["flux-dev", "flux-pro"], ["5", "10"], ["{prompt}", "{prompt}, cinematic"]
        )
    )
    control = variants[0]
    assert control.factors == {
        "model": "flux-dev",
        "parameters.duration": "5",
        "prompt_template": "{prompt}",
    }
    assert control.model == "flux-dev"
    assert control.parameters == {"aspect_ratio": "16:9", "duration": "5"}
    assert control.prompt_template == "{prompt}"
    assert control.name == "model=flux-dev, duration=5, prompt_template={prompt}"
    assert variants[-1].parameters == {"aspect_ratio": "16:9", "duration": "10"}


def test_levels_keep_their_json_type_in_parameters() -> None:
    variants = expand({"parameters.steps": [20, 40]}, model="sdxl", prompt_template="{prompt}!")
    assert [v.parameters for v in variants] == [{"steps": 20}, {"steps": 40}]
    assert [v.factors for v in variants] == [{"parameters.steps": "20"}, {"parameters.steps": "40"}]
    assert {v.model for v in variants} == {"sdxl"}
    assert {v.prompt_template for v in variants} == {"{prompt}!"}


@pytest.mark.parametrize(
    ("factors", "kwargs"),
    [
        ({}, {"model": "m"}),
        ({"colour": ["a", "b"]}, {"model": "m"}),
        ({"parameters.": ["a", "b"]}, {"model": "m"}),
        ({"parameters.steps": [20]}, {"model": "m"}),
        ({"parameters.steps": [20, "20"]}, {"model": "m"}),
        ({"parameters.steps": [20, 40]}, {}),
        ({"model": ["a", "b"], "parameters.x": ["1", "2"]}, {"fractional": True}),
        (
            {"model": ["a", "b"], "parameters.x": ["1", "2"], "parameters.y": ["1", "2", "3"]},
            {"fractional": True},
        ),
        ({"parameters.x": [str(i) for i in range(MAX_VARIANTS + 1)]}, {"model": "m"}),
    ],
)
def test_a_design_that_cannot_be_made_is_refused(factors: dict, kwargs: dict) -> None:
    with pytest.raises(EaselError) as caught:
        expand(factors, **kwargs)
    assert caught.value.info.details == {"field": "factors"}


def test_variant_letters_go_on_past_z() -> None:
    assert [variant_letter(i) for i in (0, 1, 25, 26, 27, 51, 52, 701, 702)] == [
        "A", "B", "Z", "AA", "AB", "AZ", "BA", "ZZ", "AAA",
    ]  # fmt: skip


def _balanced(variants: list[Variant], names: list[str]) -> None:
    """Each level equally often; each pair of factors in every combination equally often."""
    for name in names:
        counts = Counter(v.factors[name] for v in variants)
        assert len(set(counts.values())) == 1
    for first, second in itertools.combinations(names, 2):
        pairs = Counter((v.factors[first], v.factors[second]) for v in variants)
        levels = len({v.factors[first] for v in variants}) * len(
            {v.factors[second] for v in variants}
        )
        assert len(pairs) == levels
        assert len(set(pairs.values())) == 1


def test_a_half_fraction_of_two_level_factors_is_balanced() -> None:
    factors = {
        "model": ["a", "b"],
        "parameters.x": ["1", "2"],
        "parameters.y": ["1", "2"],
        "prompt_template": ["{prompt}", "{prompt}!"],
    }
    variants = expand(factors, fractional=True)
    assert len(variants) == 8
    assert variants[0].factors == {name: str(levels[0]) for name, levels in factors.items()}
    _balanced(variants, list(factors))
    # The defining relation: an even number of factors at their second level.
    for variant in variants:
        highs = sum(variant.factors[name] == levels[1] for name, levels in factors.items())
        assert highs % 2 == 0


def test_a_third_of_three_level_factors_is_a_latin_square() -> None:
    factors = {name: ["0", "1", "2"] for name in ("model", "parameters.x", "parameters.y")}
    variants = expand(factors, fractional=True)
    assert len(variants) == 9
    _balanced(variants, list(factors))


def _arms(means: dict[str, dict[MetricName, float]]) -> dict[str, dict[MetricName, ArmMetric]]:
    return {
        variant_id: {metric: ArmMetric(metric, n=1000, mean=mean) for metric, mean in found.items()}
        for variant_id, found in means.items()
    }


def test_a_two_by_two_reports_both_main_effects() -> None:
    """Planted: flux-pro +10 points of success, duration 10 -4 points, an interaction of 2."""
    variants = expand({"model": ["flux-dev", "flux-pro"], "parameters.duration": ["5", "10"]})
    rng = np.random.default_rng(15)
    arms = {}
    for variant in variants:
        pro = variant.factors["model"] == "flux-pro"
        long = variant.factors["parameters.duration"] == "10"
        rate = 0.50 + 0.10 * pro - 0.04 * long + 0.02 * (pro and long)
        successes = rng.random(40_000) < rate
        cost = 0.05 + 0.03 * pro + 0.02 * long
        arms[variant.id] = {
            SUCCESS: ArmMetric(SUCCESS, n=40_000, mean=float(successes.mean())),
            COST: ArmMetric(COST, n=40_000, mean=cost),
        }
    effects = main_effects(variants, arms)
    assert set(effects) == {"model", "parameters.duration"}
    model, duration = effects["model"], effects["parameters.duration"]
    # The interaction (0.02 in one cell of four) adds 0.005 to each main effect.
    assert model["flux-pro"][SUCCESS] == pytest.approx(0.055, abs=0.006)
    assert model["flux-dev"][SUCCESS] == pytest.approx(-0.055, abs=0.006)
    assert duration["10"][SUCCESS] == pytest.approx(-0.015, abs=0.006)
    assert duration["5"][SUCCESS] == pytest.approx(0.015, abs=0.006)
    # Cost is exact and purely additive: half of each difference either side.
    assert model["flux-pro"][COST] == pytest.approx(0.015)
    assert duration["5"][COST] == pytest.approx(-0.01)
    for factor in effects.values():
        for metric in (SUCCESS, COST):
            assert sum(level[metric] for level in factor.values()) == pytest.approx(0.0, abs=1e-12)


def test_a_half_fraction_recovers_additive_effects_exactly() -> None:
    factors = {name: ["lo", "hi"] for name in ("model", "parameters.x", "parameters.y")}
    planted = {"model": 0.2, "parameters.x": -0.1, "parameters.y": 0.05}
    variants = expand(factors, fractional=True)
    arms = _arms(
        {
            v.id: {
                COST: 1.0 + sum(size for name, size in planted.items() if v.factors[name] == "hi")
            }
            for v in variants
        }
    )
    effects = main_effects(variants, arms, [COST])
    for name, size in planted.items():
        assert effects[name]["hi"][COST] == pytest.approx(size / 2)
        assert effects[name]["lo"][COST] == pytest.approx(-size / 2)


def test_variants_without_a_value_or_factors_are_left_out() -> None:
    variants = expand({"parameters.x": ["1", "2"]}, model="m") + [Variant("Z", "other")]
    arms = _arms({"A": {COST: 1.0}, "B": {COST: 3.0, SUCCESS: 0.5}, "Z": {COST: 100.0}})
    effects = main_effects(variants, arms)
    assert effects == {"parameters.x": {"1": {COST: -1.0}, "2": {COST: 1.0}}}

"""actors/polling.py: when a running task is checked next."""

from __future__ import annotations

import pytest

from actors.catalog import ModelSpec, PollingSpec, PollingStrategy
from actors.polling import DEFAULT, delay_before_check, polling_for


def test_fixed_interval_every_check() -> None:
    spec = PollingSpec(strategy=PollingStrategy.FIXED, interval=7)
    assert [delay_before_check(spec, n) for n in range(5)] == [7, 7, 7, 7, 7]


def test_exponential_grows_by_factor() -> None:
    spec = PollingSpec(strategy=PollingStrategy.EXPONENTIAL, initial=1, factor=2, max_interval=1000)
    assert [delay_before_check(spec, n) for n in range(6)] == [1, 2, 4, 8, 16, 32]


def test_exponential_is_capped() -> None:
    spec = PollingSpec(initial=2, factor=1.5, max_interval=30)
    delays = [delay_before_check(spec, n) for n in range(20)]
    assert delays[:3] == pytest.approx([2, 3, 4.5])
    assert max(delays) == 30
    assert delays[-1] == 30
    assert delays == sorted(delays)  # never shrinks


def test_exponential_with_huge_check_counts_stays_at_the_cap() -> None:
    spec = PollingSpec(initial=2, factor=1.5, max_interval=30)
    assert delay_before_check(spec, 10_000) == 30
    assert delay_before_check(spec, 10**9) == 30


def test_factor_one_is_a_fixed_interval() -> None:
    spec = PollingSpec(initial=3, factor=1, max_interval=30)
    assert [delay_before_check(spec, n) for n in range(4)] == [3, 3, 3, 3]


@pytest.mark.parametrize("strategy", [PollingStrategy.FIXED, PollingStrategy.EXPONENTIAL])
def test_first_check_comes_first_then_the_schedule(strategy: PollingStrategy) -> None:
    spec = PollingSpec(
        strategy=strategy, interval=5, initial=2, factor=2, max_interval=100, first_check=240
    )
    assert delay_before_check(spec, 0) == 240
    if strategy is PollingStrategy.FIXED:
        assert [delay_before_check(spec, n) for n in (1, 2, 3)] == [5, 5, 5]
    else:
        assert [delay_before_check(spec, n) for n in (1, 2, 3)] == [4, 8, 16]


def test_first_check_is_not_capped() -> None:
    spec = PollingSpec(initial=1, max_interval=10, first_check=300)
    assert delay_before_check(spec, 0) == 300


def test_default_spec() -> None:
    assert DEFAULT == PollingSpec()
    assert delay_before_check(DEFAULT, 0) == DEFAULT.initial


def test_spec_validators() -> None:
    with pytest.raises(ValueError):
        PollingSpec(interval=0)
    with pytest.raises(ValueError):
        PollingSpec(factor=0.5)
    with pytest.raises(ValueError):
        PollingSpec(max_interval=-1)


def test_polling_for_prefers_model_then_provider_then_default() -> None:
    own = PollingSpec(strategy=PollingStrategy.FIXED, interval=9)
    provider = PollingSpec(initial=4)
    with_own = ModelSpec(provider="p", provider_model="m", polling=own)
    without = ModelSpec(provider="p", provider_model="m")
    assert polling_for(with_own, provider) is own
    assert polling_for(without, provider) is provider
    assert polling_for(without) is DEFAULT


def test_large_factor_does_not_overflow() -> None:
    spec = PollingSpec(initial=1, factor=1e6, max_interval=30)
    assert delay_before_check(spec, 100) == 30

"""An experiment's results from its stored per-job rows: ``analyze`` and ``results_to_api``.

The order matters and is the one the experimentation platforms settled on:

1. The sample-ratio-mismatch check on the units per variant, against the configured
   shares (fixed allocation only: a bandit moves its shares on purpose). A mismatch
   flags the results, and no winner is declared whatever the tests say.
2. Every metric per variant (``ArmMetric``), from the finished jobs: success rate,
   queue wait, run time, cost (with the spend and the cost per success), rating mean
   and count, rating rate.
3. Every variant against the control (the first variant) on every metric, in the
   metric's direction (``Goal``): the test for the kind of metric, the absolute
   difference and the relative lift with their intervals.
4. Holm's correction across variants x primary metrics; secondary metrics are
   reported uncorrected, as description.
5. A winner only when its adjusted p < alpha on a primary metric, no primary metric
   is significantly worse, every arm has ``Experiment.min_sample`` finished jobs, and
   the sample ratio is sound (a bandit: its chance to be best reaches
   ``BanditSettings.win_at``). Of several variants better than the control, the
   one with the highest confidence wins (they are not tested against each other,
   and the recommendation says so); when every variant is significantly worse, the
   control wins. The recommendation states the trade-off in numbers either way.

The unit of assignment is the user (``Observation.unit``). When units have several
jobs, those jobs are not independent draws: every metric becomes the ratio
``sum(x) / sum(jobs)`` over users with its delta-method variance
(``stats.ratio_estimate``) and the comparisons are z-tests on it, so the intervals
are as wide as the evidence. With one job per unit the classic per-job tests apply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from actors.experiments import stats
from actors.experiments.model import (
    Allocation,
    ArmMetric,
    Comparison,
    Experiment,
    Goal,
    Interval,
    Metric,
    MetricName,
    Observation,
    Results,
    SampleRatio,
    Variant,
    Winner,
)

#: Segments shown at most (the largest ones): each adds comparisons, and with them
#: differences that are there by chance alone.
TOP_SEGMENTS = 8
#: Hour bands of the day (UTC) results are broken down by.
HOUR_BAND = 6

#: The direction of a metric the experiment does not list.
DEFAULT_GOALS: dict[MetricName, Goal] = {
    MetricName.SUCCESS_RATE: Goal.MAXIMIZE,
    MetricName.QUEUE_WAIT: Goal.MINIMIZE,
    MetricName.RUN_TIME: Goal.MINIMIZE,
    MetricName.COST: Goal.MINIMIZE,
    MetricName.RATING: Goal.MAXIMIZE,
    MetricName.RATING_RATE: Goal.MAXIMIZE,
}
_RATES = frozenset({MetricName.SUCCESS_RATE, MetricName.RATING_RATE})
#: Metrics with a long upper tail, capped at ``stats.CAP_PERCENTILE`` before the mean.
_CAPPED = frozenset({MetricName.QUEUE_WAIT, MetricName.RUN_TIME, MetricName.COST})


# -- the rows as columns ------------------------------------------------------------------------


def _column(values: Sequence[float | int | bool | None]) -> np.ndarray:
    return np.array([math.nan if value is None else float(value) for value in values])


@attrs.frozen
class _Rows:
    """Observations as numpy columns (NaN where a value is missing)."""

    variant: np.ndarray  # index into experiment.variants
    unit: np.ndarray  # a code per distinct unit
    succeeded: np.ndarray
    queue_wait: np.ndarray
    run_time: np.ndarray
    cost: np.ndarray
    rating: np.ndarray
    created_at: np.ndarray
    segment: np.ndarray  # object: str or None

    @classmethod
    def of(cls, observations: Sequence[Observation], index: Mapping[str, int]) -> _Rows:
        _, units = np.unique([o.unit for o in observations] or [""], return_inverse=True)
        return cls(
            variant=np.array([index[o.variant_id] for o in observations], dtype=int),
            unit=units[: len(observations)],
            succeeded=_column([o.succeeded for o in observations]),
            queue_wait=_column([o.queue_wait for o in observations]),
            run_time=_column([o.run_time for o in observations]),
            cost=_column([o.cost for o in observations]),
            rating=_column([o.rating for o in observations]),
            created_at=_column([o.created_at for o in observations]),
            segment=np.array([o.segment for o in observations], dtype=object),
        )

    def where(self, mask: np.ndarray) -> _Rows:
        return _Rows(**{f.name: getattr(self, f.name)[mask] for f in attrs.fields(_Rows)})

    @property
    def finished(self) -> np.ndarray:
        return ~np.isnan(self.succeeded)

    def values(self, metric: MetricName) -> tuple[np.ndarray, np.ndarray]:
        """Which rows count for ``metric`` (finished, with a value), and the values."""
        if metric is MetricName.SUCCESS_RATE:
            return self.finished, self.succeeded
        if metric is MetricName.RATING_RATE:
            return self.finished, (~np.isnan(self.rating)).astype(float)
        column = getattr(self, metric.value)
        return self.finished & ~np.isnan(column), column


@attrs.frozen
class _Sample:
    """One arm's values of one metric: per job, and what the estimate is made of."""

    metric: MetricName
    values: np.ndarray  # capped where the metric is
    raw: np.ndarray
    units: np.ndarray
    estimate: stats.Estimate | None
    #: Per-unit means (for the rank check when the unit is the user).
    unit_means: np.ndarray


def _sample(
    rows: _Rows, metric: MetricName, cap: float | None, per_unit: bool
) -> _Sample:
    mask, column = rows.values(metric)
    raw = column[mask]
    values = np.minimum(raw, cap) if cap is not None else raw
    units = rows.unit[mask]
    _, inverse = np.unique(units, return_inverse=True)
    sums, counts = np.bincount(inverse, values), np.bincount(inverse).astype(float)
    estimate: stats.Estimate | None = None
    if len(values) and per_unit:
        estimate = stats.ratio_estimate(sums, counts)
    elif len(values) and metric in _RATES:
        estimate = stats.proportion_estimate(int(values.sum()), len(values))
    elif len(values):
        estimate = stats.mean_estimate(values)
    return _Sample(metric, values, raw, units, estimate, sums / np.maximum(counts, 1))


def _arm_metric(sample: _Sample, cap: float | None, per_unit: bool, successes: int) -> ArmMetric:
    """What the arm shows for one metric; ``successes``: its succeeded jobs, for cost
    per success (the spend on finished jobs over them)."""
    estimate = sample.estimate
    n = len(sample.values)
    if estimate is None:
        return ArmMetric(sample.metric, 0, None, units=0)
    interval: Interval | None = None
    rate = sample.metric in _RATES
    if rate and not per_unit:
        interval = stats.wilson_interval(int(sample.values.sum()), n)
    elif estimate.n > 1:
        # Per user: Student's interval on the ratio's delta-method error, users - 1 df.
        interval = stats.t_interval(estimate.mean, estimate.se, estimate.n - 1)
        if rate:
            interval = Interval(max(0.0, interval.low), min(1.0, interval.high))
    return ArmMetric(
        metric=sample.metric,
        n=n,
        mean=estimate.mean,
        interval=interval,
        median=None if rate else float(np.median(sample.raw)),
        total=float(sample.raw.sum()),
        units=len(np.unique(sample.units)),
        per_success=(
            float(sample.raw.sum()) / successes
            if sample.metric is MetricName.COST and successes else None
        ),
        capped_at=cap,
    )


def _caps(rows: _Rows) -> dict[MetricName, float]:
    """One cap per long-tailed metric, from every arm's values together."""
    caps = {}
    for metric in _CAPPED:
        mask, column = rows.values(metric)
        if mask.any():
            caps[metric] = stats.cap_at(column[mask])
    return caps


def _arms(
    rows: _Rows, variants: Sequence[Variant], caps: Mapping[MetricName, float], per_unit: bool
) -> tuple[dict[str, dict[MetricName, ArmMetric]], dict[str, dict[MetricName, _Sample]]]:
    arms: dict[str, dict[MetricName, ArmMetric]] = {}
    samples: dict[str, dict[MetricName, _Sample]] = {}
    for index, variant in enumerate(variants):
        arm = rows.where(rows.variant == index)
        successes = int(np.nansum(arm.succeeded))
        samples[variant.id] = {
            metric: _sample(arm, metric, caps.get(metric), per_unit) for metric in MetricName
        }
        arms[variant.id] = {
            metric: _arm_metric(sample, caps.get(metric), per_unit, successes)
            for metric, sample in samples[variant.id].items()
        }
    return arms, samples


# -- comparisons --------------------------------------------------------------------------------


def _compare(
    control: _Sample,
    variant: _Sample,
    *,
    control_id: str,
    variant_id: str,
    goal: Goal,
    primary: bool,
    per_unit: bool,
    sequential_at: float | None,
) -> Comparison:
    """``variant`` against ``control`` on one metric; ``adjusted_p`` and ``significant``
    are settled later, once the whole family's p-values are known."""
    metric = control.metric
    a, b = control.estimate, variant.estimate
    empty = Comparison(metric, variant_id, control_id, None, None, None, None, False, "",
                       primary=primary)
    if a is None or b is None or a.n < 2 or b.n < 2:
        return empty
    difference = b.mean - a.mean
    se = math.hypot(a.se, b.se)
    check_test = check_p = None
    df: float | None = None
    if per_unit:
        test, result = "delta-method welch t (per user)", stats.welch(a, b)
        df = result.df
    elif metric in _RATES:
        test = "two-proportion z"
        result = stats.two_proportion_z(int(control.values.sum()), a.n,
                                        int(variant.values.sum()), b.n)
    else:
        test, result = "welch t", stats.welch_t(control.values, variant.values)
        df = result.df
    if metric is MetricName.RATING:
        check_test = "mann-whitney u"
        pair = (variant.unit_means, control.unit_means) if per_unit else (
            variant.values, control.values)
        check_p = stats.mann_whitney_u(*pair).p_value
    lift = stats.relative_lift(a, b)
    p_value = result.p_value
    if sequential_at is not None:
        n = min(a.n, b.n)
        p_value = stats.always_valid_p(
            difference, se, stats.mixture_variance(se, n, sequential_at))
        difference_interval = stats.sequential_interval(difference, se, n, sequential_at)
        lift_interval = (
            stats.sequential_interval(*lift, n, sequential_at) if lift is not None else None)
        test += " (always valid)"
    else:
        difference_interval = (
            stats.t_interval(difference, se, df) if df is not None
            else stats.normal_interval(difference, se)
        )
        lift_interval = stats.normal_interval(*lift) if lift is not None else None
    better = None if difference == 0 else (difference > 0) == (goal is Goal.MAXIMIZE)
    return attrs.evolve(
        empty,
        lift=lift[0] if lift is not None else None,
        lift_interval=lift_interval,
        p_value=p_value,
        test=test,
        better=better,
        difference=difference,
        difference_interval=difference_interval,
        check_test=check_test,
        check_p_value=check_p,
    )


def _corrected(comparisons: list[Comparison]) -> list[Comparison]:
    """Holm across the primary comparisons; secondary ones stay uncorrected."""
    family = [i for i, c in enumerate(comparisons) if c.primary and c.p_value is not None]
    adjusted = dict(zip(family, stats.holm([comparisons[i].p_value for i in family])))
    out = []
    for i, c in enumerate(comparisons):
        if c.p_value is None:
            out.append(c)
            continue
        p = adjusted.get(i, c.p_value) if c.primary else c.p_value
        out.append(attrs.evolve(
            c, adjusted_p=p if c.primary else None, significant=p < stats.ALPHA))
    return out


# -- the recommendation -----------------------------------------------------------------------------


_NOUNS = {
    MetricName.SUCCESS_RATE: "success rate",
    MetricName.RATING_RATE: "rating rate",
    MetricName.RATING: "rating",
    MetricName.COST: "cost",
    MetricName.RUN_TIME: "run time",
    MetricName.QUEUE_WAIT: "queue wait",
}


def label(variant: Variant) -> str:
    """How a sentence names a variant: "Variant B"."""
    return f"Variant {variant.name or variant.id}"


def _percent(value: float) -> str:
    return f"{value * 100:.0f} %" if abs(value) >= 0.01 else f"{value * 100:.1g} %"


def _noun_phrase(c: Comparison) -> str:
    """The change on one metric as a noun phrase: "0.7 points lower success rate"."""
    noun = _NOUNS[c.metric]
    d = c.difference or 0.0
    if d == 0:
        return f"the same {noun}"
    way = "higher" if d > 0 else "lower"
    if c.metric in _RATES:
        return f"{abs(d) * 100:.1f} points {way} {noun}"
    if c.metric is MetricName.RATING or c.lift is None:
        return f"a {abs(d):.2f} {way} {noun}"
    if c.metric is not MetricName.COST:
        way = "longer" if d > 0 else "shorter"
    return f"{_percent(abs(c.lift))} {way} {noun}"


def _change(c: Comparison) -> str:
    """The change with its significance: "0.7 points lower success rate, not significant"."""
    if c.difference is None or c.p_value is None:
        return f"no {_NOUNS[c.metric]} to compare yet"
    if not c.significant:
        return f"{_noun_phrase(c)}, not significant"
    p = c.adjusted_p if c.adjusted_p is not None else c.p_value
    return f"{_noun_phrase(c)}, significant (confidence {_confidence(1 - p)})"


def _confidence(value: float) -> str:
    return "> 99.9 %" if value > 0.999 else f"{value * 100:.1f} %"


def trade_off(comparisons: Sequence[Comparison], lead: MetricName) -> str:
    """One variant's trade-off against the control, as a predicate: "costs 44 % less
    with 0.7 points lower success rate, not significant".

    ``lead`` is the metric the decision rests on; the cost change comes first when
    cost is not that metric (the trade-off users weigh), then the other primary
    metrics.
    """
    by_metric = {c.metric: c for c in comparisons}
    first = by_metric[lead]
    cost = by_metric.get(MetricName.COST)
    clause = f"has {_change(first)}"
    if (cost is not None and lead is not MetricName.COST and cost.difference
            and cost.lift is not None):
        way = "more" if cost.difference > 0 else "less"
        clause = f"costs {_percent(abs(cost.lift))} {way} with {_change(first)}"
    for other in comparisons:
        if other.primary and other.metric is not lead:
            clause += f"; {_change(other)}"
    return clause


# -- segments -----------------------------------------------------------------------------------


def _segment_masks(rows: _Rows, attribute: str | None) -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    if attribute:
        for value in sorted({v for v in rows.segment if v is not None}):
            masks[f"{attribute}={value}"] = rows.segment == value
    days = np.floor(rows.created_at / 86400)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    masks["day=weekday"] = weekday < 5
    masks["day=weekend"] = weekday >= 5
    hours = np.floor((rows.created_at % 86400) / 3600)
    for start in range(0, 24, HOUR_BAND):
        band = (hours >= start) & (hours < start + HOUR_BAND)
        masks[f"hour={start:02d}-{start + HOUR_BAND:02d} UTC"] = band
    return {key: mask for key, mask in masks.items() if mask.any()}


def _segments(
    rows: _Rows,
    experiment: Experiment,
    caps: Mapping[MetricName, float],
    per_unit: bool,
    top: int,
) -> tuple[dict[str, dict[str, dict[MetricName, ArmMetric]]], str | None]:
    masks = _segment_masks(rows, experiment.segment_attribute)
    if not masks:
        return {}, None
    largest = sorted(masks, key=lambda key: (-int(masks[key].sum()), key))[:top]
    segments = {
        key: _arms(rows.where(masks[key]), experiment.variants, caps, per_unit)[0]
        for key in largest
    }
    note = (
        f"Segments: the {len(largest)} largest of {len(masks)} are shown. Each segment "
        f"repeats every comparison, so with {len(largest)} segments some differences will "
        "look significant by chance alone (multiple comparisons): treat a segment's "
        "difference as a lead for a new experiment, not as a result."
    )
    return segments, note


# -- the whole analysis ------------------------------------------------------------------------------


def _units_per_variant(rows: _Rows, variants: int) -> list[int]:
    """Distinct units per variant (a unit moved by a new phase counts in both)."""
    if not len(rows.variant):
        return [0] * variants
    pairs = np.unique(np.stack([rows.variant, rows.unit]), axis=1)
    return [int(count) for count in np.bincount(pairs[0], minlength=variants)]


def _shares(variants: Sequence[Variant]) -> dict[str, float]:
    total = sum(variant.weight for variant in variants)
    return {v.id: (v.weight / total if total else 1 / len(variants)) for v in variants}


def analyze(
    experiment: Experiment,
    observations: Sequence[Observation],
    *,
    weights: Mapping[str, float] | None = None,
    p_best: Mapping[str, float] | None = None,
    top_segments: int = TOP_SEGMENTS,
) -> Results:
    """The results of ``experiment`` from its enrolled jobs.

    ``weights`` are the current traffic shares and ``p_best`` each variant's chance
    to be best (a bandit's, from its posterior), reported as given; a bandit's
    winner is decided on ``p_best``. Observations of variants the experiment does
    not have are left out (and said so in the notes).
    """
    variants = experiment.variants
    index = {variant.id: i for i, variant in enumerate(variants)}
    known = [o for o in observations if o.variant_id in index]
    notes: list[str] = []
    if len(known) < len(observations):
        notes.append(f"{len(observations) - len(known)} jobs of unknown variants left out.")
    rows = _Rows.of(known, index)
    bandit = experiment.allocation is Allocation.BANDIT

    # 1. Sample ratio: distinct units per variant (the unit is what is assigned).
    srm: SampleRatio | None = None
    phases = sorted({o.phase for o in known if o.phase is not None})
    if bandit:
        notes.append("No sample ratio check: a bandit changes the traffic shares on purpose.")
    else:
        current = rows.where(_column([o.phase for o in known]) == experiment.phase) if (
            phases) else rows
        srm = stats.sample_ratio(
            dict(zip([v.id for v in variants], _units_per_variant(current, len(variants)))),
            _shares(variants))
        if phases and phases != [experiment.phase]:
            notes.append(
                f"The weights changed during the experiment (phases {phases[0]} to "
                f"{phases[-1]}): the sample ratio is checked on phase {experiment.phase}'s "
                "units, and the comparisons pool every phase, which biases them if the "
                "metrics drifted while the shares moved."
            )
        if srm.mismatch:
            notes.append(
                f"Sample ratio mismatch (chi-squared p = {srm.p_value:.2g}): the units per "
                "variant do not match the configured shares, so assignment or logging is "
                "broken and no winner is declared."
            )

    # 2. Every metric per arm; per unit when units have several finished jobs.
    finished = rows.where(rows.finished)
    per_unit = sum(_units_per_variant(finished, len(variants))) < len(finished.variant)
    if per_unit:
        notes.append(
            "Users have several jobs each: every metric is a ratio over users with its "
            "delta-method variance, so the intervals count users, not jobs."
        )
    caps = _caps(rows)
    arms, samples = _arms(rows, variants, caps, per_unit)

    # 3-4. Every variant against the control, Holm over the primary family.
    listed = {metric.name: metric for metric in experiment.metrics}
    primary = [m.name for m in experiment.primary_metrics()] or [MetricName.SUCCESS_RATE]
    control = experiment.control
    # Always-valid mixtures are tuned to be tightest at the minimum sample, where a
    # decision first becomes possible (their width barely grows beyond it).
    sequential_at = float(max(experiment.min_sample, 2)) if experiment.sequential else None
    comparisons = _corrected([
        _compare(
            samples[control.id][metric],
            samples[variant.id][metric],
            control_id=control.id,
            variant_id=variant.id,
            goal=listed.get(metric, Metric(metric, goal=DEFAULT_GOALS[metric])).goal,
            primary=metric in primary,
            per_unit=per_unit,
            sequential_at=sequential_at,
        )
        for variant in variants[1:]
        for metric in MetricName
    ])
    if experiment.sequential:
        notes.append(
            "Always-valid intervals and p-values (normal-mixture sequential test): they "
            "stay valid however often the results are looked at, at the price of width."
        )
    if any(c.primary for c in comparisons) and len(comparisons) > len(primary):
        notes.append("Secondary metrics are not corrected for multiple comparisons.")
    for c in comparisons:
        if c.check_p_value is not None and c.p_value is not None and (
                (c.check_p_value < stats.ALPHA) != (c.p_value < stats.ALPHA)):
            notes.append(
                f"{label(variants[index[c.variant_id]])}'s {_NOUNS[c.metric]}: Welch's test "
                f"(p = {c.p_value:.2g}) and the Mann-Whitney check (p = "
                f"{c.check_p_value:.2g}) disagree; read that difference with care."
            )

    # 5. The winner, or why there is none.
    winner, recommendation = _decide(
        experiment, srm, arms, comparisons, primary, p_best)

    segments, note = _segments(rows, experiment, caps, per_unit, top_segments)
    if note:
        notes.append(note)
    return Results(
        experiment_id=experiment.id,
        srm=srm,
        arms=arms,
        comparisons=comparisons,
        winner=winner,
        recommendation=recommendation,
        p_best=dict(p_best) if p_best is not None else None,
        weights=dict(weights) if weights is not None else _shares(variants),
        segments=segments or None,
        notes=notes,
        alpha=stats.ALPHA,
        per_unit=per_unit,
        sequential=experiment.sequential,
    )


def _decide(
    experiment: Experiment,
    srm: SampleRatio | None,
    arms: Mapping[str, Mapping[MetricName, ArmMetric]],
    comparisons: Sequence[Comparison],
    primary: Sequence[MetricName],
    p_best: Mapping[str, float] | None,
) -> tuple[Winner | None, str]:
    variants = experiment.variants
    by_variant = {v.id: [c for c in comparisons if c.variant_id == v.id] for v in variants[1:]}
    lead = primary[0]

    def summary() -> str:
        return "; ".join(
            f"{label(v)} {trade_off(by_variant[v.id], lead)}" for v in variants[1:]) + "."

    finished = {v.id: arms[v.id][MetricName.SUCCESS_RATE].n for v in variants}
    if not any(finished.values()):
        return None, "No winner yet: no finished jobs."
    if srm is not None and srm.mismatch:
        observed = " / ".join(str(srm.observed[v.id]) for v in variants)
        expected = " / ".join(f"{srm.expected[v.id]:.0f}" for v in variants)
        return None, (
            f"No winner: sample ratio mismatch ({observed} users against the expected "
            f"{expected}, p = {srm.p_value:.2g}); find what loses or adds units to one "
            "variant before reading any result."
        )
    short = [v for v in variants if finished[v.id] < experiment.min_sample]
    if short:
        worst = min(short, key=lambda v: finished[v.id])
        return None, (
            f"No winner yet: sample too small ({label(worst)} has {finished[worst.id]} "
            f"finished job{'' if finished[worst.id] == 1 else 's'} of the "
            f"{experiment.min_sample} needed per arm). " + summary())

    if experiment.allocation is Allocation.BANDIT:
        if not p_best:
            return None, "No winner yet: no chance to be best computed. " + summary()
        best_id = max(p_best, key=lambda key: p_best[key])
        chance = p_best[best_id]
        best = variants[[v.id for v in variants].index(best_id)]
        if chance < experiment.bandit.win_at:
            return None, (
                f"No winner yet: {label(best)} is best with probability "
                f"{_confidence(chance)}, {_confidence(experiment.bandit.win_at)} needed. "
                + summary())
        sentence = f"Choose {label(best)}: best with probability {_confidence(chance)}"
        if best_id in by_variant:
            sentence += f"; it {trade_off(by_variant[best_id], lead)}"
        return Winner(best_id, chance, sentence + "."), sentence + "."

    candidates = []
    losers = {}
    for v in variants[1:]:
        mine = [c for c in by_variant[v.id] if c.primary and c.significant]
        wins = [c for c in mine if c.better]
        losses = [c for c in mine if c.better is False]
        if wins and not losses:
            best = min(wins, key=lambda c: c.adjusted_p or 0.0)
            candidates.append((1 - (best.adjusted_p or 0.0), abs(best.lift or 0.0), v, best))
        if losses and not wins:
            losers[v.id] = 1 - min(c.adjusted_p or 0.0 for c in losses)
    if candidates:
        confidence, _, v, best = max(candidates, key=lambda item: item[:2])
        sentence = (f"Choose {label(v)} (confidence {_confidence(confidence)}): it "
                    f"{trade_off(by_variant[v.id], best.metric)}.")
        others = [label(other) for *_, other, _ in candidates if other is not v]
        if others:
            sentence += (f" {' and '.join(others)} also beat{'s' if len(others) == 1 else ''}"
                         f" {label(experiment.control)}; the variants were not tested against"
                         " each other, only against the control.")
        return Winner(v.id, confidence, sentence, best.metric), sentence
    if len(losers) == len(variants) - 1:
        confidence = min(losers.values())
        sentence = (f"Keep {label(experiment.control)} (confidence "
                    f"{_confidence(confidence)}): " + summary())
        return Winner(experiment.control.id, confidence, sentence, lead), sentence
    if any(c.primary and c.significant for c in comparisons):
        return None, ("No winner yet: no variant is significantly better on a primary "
                      "metric without being significantly worse on another. " + summary())
    return None, "No winner yet: no significant difference. " + summary()


# -- the API's shape ---------------------------------------------------------------------------------


def _number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such a value is absent."""
    return None if value is None or not math.isfinite(value) else float(value)


def _interval(interval: Interval | None) -> dict[str, Any] | None:
    if interval is None:
        return None
    return {"low": _number(interval.low), "high": _number(interval.high)}


def _arm_to_api(arm: ArmMetric) -> dict[str, Any]:
    return {
        "n": arm.n,
        "units": arm.units,
        "mean": _number(arm.mean),
        "interval": _interval(arm.interval),
        "median": _number(arm.median),
        "total": _number(arm.total),
        "perSuccess": _number(arm.per_success),
        "cappedAt": _number(arm.capped_at),
    }


def _arms_to_api(arms: Mapping[str, Mapping[MetricName, ArmMetric]]) -> dict[str, Any]:
    return {
        variant: {metric.value: _arm_to_api(arm) for metric, arm in metrics.items()}
        for variant, metrics in arms.items()
    }


def results_to_api(results: Results) -> dict[str, Any]:
    """``Results`` as ``GET /api/admin/experiments/{id}/results`` answers it: JSON-ready
    (camelCase keys, metric names as their values, no NaN), for the API and pages."""
    srm = results.srm
    winner = results.winner
    return {
        "experimentId": results.experiment_id,
        "alpha": results.alpha,
        "perUnit": results.per_unit,
        "sequential": results.sequential,
        "sampleRatio": None if srm is None else {
            "observed": srm.observed,
            "expected": srm.expected,
            "chi2": _number(srm.chi2),
            "pValue": _number(srm.p_value),
            "mismatch": srm.mismatch,
        },
        "arms": _arms_to_api(results.arms),
        "comparisons": [
            {
                "metric": c.metric.value,
                "variantId": c.variant_id,
                "controlId": c.control_id,
                "primary": c.primary,
                "difference": _number(c.difference),
                "differenceInterval": _interval(c.difference_interval),
                "lift": _number(c.lift),
                "liftInterval": _interval(c.lift_interval),
                "pValue": _number(c.p_value),
                "adjustedP": _number(c.adjusted_p),
                "significant": c.significant,
                "better": c.better,
                "test": c.test,
                "checkTest": c.check_test,
                "checkPValue": _number(c.check_p_value),
            }
            for c in results.comparisons
        ],
        "winner": None if winner is None else {
            "variantId": winner.variant_id,
            "confidence": _number(winner.confidence),
            "metric": winner.metric.value if winner.metric else None,
            "recommendation": winner.recommendation,
        },
        "recommendation": results.recommendation,
        "pBest": results.p_best,
        "weights": results.weights,
        "mainEffects": None if results.main_effects is None else {
            factor: {
                level: {metric.value: _number(value) for metric, value in effects.items()}
                for level, effects in levels.items()
            }
            for factor, levels in results.main_effects.items()
        },
        "segments": None if results.segments is None else {
            key: _arms_to_api(arms) for key, arms in results.segments.items()
        },
        "notes": list(results.notes),
    }

"""An experiment's data, and the shape of its results.

An experiment compares *variants* (a catalog model, optionally a prompt template
and parameters) on *metrics*. A submission that matches a running experiment is
assigned a variant by hashing its unit (the user id), rewritten to that variant,
and records ``experiment_id`` and ``variant_id``; the assignment is stored, so a
unit keeps its variant whatever happens to the weights afterwards. Results are
computed from the stored per-job rows (``Observation``), never from counters.
"""

from __future__ import annotations

import enum
import secrets
from typing import Any

import attrs


class ExperimentState(str, enum.Enum):
    DRAFT = "DRAFT"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"


class MetricName(str, enum.Enum):
    """What can be measured per job."""

    SUCCESS_RATE = "success_rate"
    #: From submission to the provider taking the job.
    QUEUE_WAIT = "queue_wait"
    #: From the provider taking the job to its end.
    RUN_TIME = "run_time"
    COST = "cost"
    #: Mean rating (1-5) of the rated jobs.
    RATING = "rating"
    #: Share of finished jobs that were rated.
    RATING_RATE = "rating_rate"


class Goal(str, enum.Enum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


class Role(str, enum.Enum):
    PRIMARY = "primary"
    SECONDARY = "secondary"


class Allocation(str, enum.Enum):
    #: The configured weights, always.
    FIXED = "fixed"
    #: Thompson sampling on the decision metric, with a floor per arm.
    BANDIT = "bandit"


def new_experiment_id() -> str:
    return "exp_" + secrets.token_hex(8)


@attrs.frozen
class Metric:
    name: MetricName
    role: Role = Role.PRIMARY
    goal: Goal = Goal.MAXIMIZE


@attrs.frozen
class Variant:
    #: Unique in the experiment; the first variant is the control.
    id: str
    model: str
    name: str = ""
    #: ``{prompt}`` is replaced by the client's prompt; None: the prompt as sent.
    prompt_template: str | None = None
    #: Merged over the client's parameters.
    parameters: dict[str, Any] = attrs.field(factory=dict)
    #: Share of the covered traffic (weights are normalised to sum to 1).
    weight: float = 1.0
    #: Multivariate tests: the level of each factor this variant has.
    factors: dict[str, str] = attrs.field(factory=dict)
    #: A bandit stopped sending traffic here (its chance to be best stayed low).
    paused: bool = False


@attrs.frozen
class BanditSettings:
    #: The metric Thompson sampling decides on.
    metric: MetricName = MetricName.SUCCESS_RATE
    #: Every arm keeps at least this share: ``p = floor + (1 - K * floor) * w``.
    floor: float = 0.01
    #: No re-weighting until every arm has this many values of the metric (finished
    #: jobs; rated jobs for the rating; jobs with a cost for the cost...).
    min_samples: int = 100
    #: Seconds between re-weightings.
    cadence: float = 3600.0
    #: Pause an arm whose chance to be best stays below this (None: never).
    pause_below: float | None = None
    #: ...for this many consecutive re-weightings (one low draw pauses nothing).
    pause_after: int = 3
    #: A winner is declared at this chance to be best.
    win_at: float = 0.95


@attrs.define
class Experiment:
    """One row of ``experiments`` with its variants and metrics."""

    id: str
    name: str
    variants: list[Variant]
    metrics: list[Metric]
    description: str = ""
    state: ExperimentState = ExperimentState.DRAFT
    #: Submissions for this catalog model are enrolled (besides those naming the
    #: experiment in their ``experiment`` field).
    match_model: str | None = None
    #: Share of matching units enrolled (0-1); the rest stay on the requested model.
    coverage: float = 1.0
    #: Hash seed; defaults to the id.
    seed: str = ""
    #: Mutually exclusive experiments share a namespace and own disjoint ranges of it.
    namespace: str | None = None
    namespace_range: tuple[float, float] = (0.0, 1.0)
    #: Bumped when the weights change: units are re-bucketed (new assignments only).
    phase: int = 0
    allocation: Allocation = Allocation.FIXED
    bandit: BanditSettings = BanditSettings()
    #: Spend at which the experiment pauses itself (None: no budget).
    budget: float | None = None
    #: The request attribute (in ``metadata``) results are broken down by.
    segment_attribute: str | None = None
    #: Fewest finished jobs per arm before any winner is declared.
    min_sample: int = 100
    #: Results with always-valid (sequential) intervals, for watching while running.
    sequential: bool = False
    owner: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None

    @property
    def control(self) -> Variant:
        return self.variants[0]

    def primary_metrics(self) -> list[Metric]:
        return [metric for metric in self.metrics if metric.role is Role.PRIMARY]


@attrs.frozen
class Assignment:
    """A unit's variant in one experiment: stored once, never moved."""

    experiment_id: str
    unit: str
    variant_id: str
    phase: int
    at: float


@attrs.frozen
class Observation:
    """One enrolled job as the statistics see it (read from its stored row)."""

    variant_id: str
    unit: str
    #: None while the job is not finished.
    succeeded: bool | None
    queue_wait: float | None = None
    run_time: float | None = None
    cost: float | None = None
    rating: int | None = None
    #: The job's value of the experiment's ``segment_attribute``.
    segment: str | None = None
    created_at: float = 0.0
    #: The phase of the unit's assignment (None: not known). The sample ratio is
    #: checked on the current phase's units: earlier ones were bucketed at other weights.
    phase: int | None = None

    def value(self, metric: MetricName) -> float | None:
        """This job's value of ``metric``; None when it has none (yet).

        Success and rating rate count finished jobs (1 or 0); queue wait, run time
        and cost jobs that have them; rating the rated jobs.
        """
        if metric is MetricName.SUCCESS_RATE:
            return None if self.succeeded is None else float(self.succeeded)
        if metric is MetricName.RATING_RATE:
            return None if self.succeeded is None else float(self.rating is not None)
        value = {
            MetricName.QUEUE_WAIT: self.queue_wait,
            MetricName.RUN_TIME: self.run_time,
            MetricName.COST: self.cost,
            MetricName.RATING: self.rating,
        }[metric]
        return None if value is None else float(value)


# -- results --------------------------------------------------------------------


@attrs.frozen
class Interval:
    low: float
    high: float


@attrs.frozen
class ArmMetric:
    """One metric of one variant."""

    metric: MetricName
    #: Observations the value is computed from (finished jobs, rated jobs...).
    n: int
    mean: float | None
    interval: Interval | None = None
    median: float | None = None
    #: Sum over the arm (cost: the variant's spend; rates: the count of successes or
    #: of rated jobs).
    total: float | None = None
    #: Distinct units (users) behind the ``n`` observations.
    units: int | None = None
    #: Cost only: the arm's spend on finished jobs divided by its successes.
    per_success: float | None = None
    #: Durations and cost: the level values were capped at (winsorised) before the
    #: mean, its interval and the test; the median and the total are uncapped.
    capped_at: float | None = None


@attrs.frozen
class Comparison:
    """One variant against the control on one metric."""

    metric: MetricName
    variant_id: str
    control_id: str
    #: Relative lift, (variant - control) / control.
    lift: float | None
    lift_interval: Interval | None
    #: The test's p-value, and after Holm's correction across arms x primary metrics.
    p_value: float | None
    adjusted_p: float | None
    significant: bool
    #: Which test: "two-proportion z", "welch t", "mann-whitney u".
    test: str
    #: Whether the change is for the better, given the metric's goal.
    better: bool | None = None
    #: Absolute difference, variant - control (rates: in proportion, 0.1 = 10 points).
    difference: float | None = None
    difference_interval: Interval | None = None
    #: A primary metric (in the Holm family and the winner's decision).
    primary: bool = False
    #: A second test reported beside the first (ratings: "mann-whitney u").
    check_test: str | None = None
    check_p_value: float | None = None


@attrs.frozen
class SampleRatio:
    """The sample-ratio-mismatch check (chi-squared against the weights)."""

    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    #: p < 0.001: the assignment is broken, and no winner may be declared.
    mismatch: bool


@attrs.frozen
class Winner:
    variant_id: str
    #: 1 - adjusted p (fixed allocation) or P(best) (bandit).
    confidence: float
    recommendation: str
    #: The primary metric the decision rests on (None: a bandit's chance to be best).
    metric: MetricName | None = None


@attrs.define
class Results:
    experiment_id: str
    srm: SampleRatio | None
    #: variant id -> metric -> value.
    arms: dict[str, dict[MetricName, ArmMetric]]
    comparisons: list[Comparison]
    winner: Winner | None
    #: Always set: the trade-off in numbers, or why there is no winner yet.
    recommendation: str
    #: Bandit: variant id -> chance to be best, and the current traffic shares.
    p_best: dict[str, float] | None = None
    weights: dict[str, float] | None = None
    #: Multivariate: factor -> level -> effect on each primary metric.
    main_effects: dict[str, dict[str, dict[MetricName, float]]] | None = None
    #: Segment ("tier=new", "day=weekend", "hour=06-12 UTC") -> variant id -> metric ->
    #: value (the largest segments only).
    segments: dict[str, dict[str, dict[MetricName, ArmMetric]]] | None = None
    #: Caveats shown with the results (multiple comparisons in segments, SRM...).
    notes: list[str] = attrs.field(factory=list)
    #: The significance level of the tests and intervals (0.05: 95 % intervals).
    alpha: float = 0.05
    #: Units (users) had several jobs: per-unit (ratio-metric) variances were used.
    per_unit: bool = False
    #: The comparisons' p-values and intervals are always valid (sequential).
    sequential: bool = False

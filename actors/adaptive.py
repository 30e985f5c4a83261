"""Adaptive polling: check a running task when it has probably just finished.

Fixed and exponential polling know nothing about the model, so they either check a
six-minute video every few seconds for six minutes or leave a finished one waiting
for the next widely spaced check. A model's finished jobs say how long it takes.
This module learns that distribution and plans the check times from it.

The cost being minimised, per task, is ``check_cost * E[checks] + E[delay]``, where
``delay`` is the time from the task's completion to the first check at or after it
and ``check_cost`` is how many seconds of delay one check is worth. With check times
``0 = t0 < t1 < t2 < ...`` and completion-time CDF ``F``, check ``i`` happens only if
the task is still running at ``t(i-1)``, and a task finishing inside ``(a, b]`` waits
until ``b``, so each interval contributes::

    check_cost * (1 - F(a))  +  integral over (a, b] of (b - s) dF(s)
                             =  check_cost * (1 - F(a)) + I(b) - I(a) - (b - a) F(a)

with ``I(t) = integral of F from 0 to t``. The cost is a sum over consecutive
pairs, so the best plan over a grid of candidate times is a shortest path: dynamic
programming, exact on the grid (setting the derivative in ``t(i)`` to zero gives the
classic recurrence ``F(t(i)) - F(t(i-1)) = f(t(i)) (t(i+1) - t(i) + check_cost)``,
but it is unstable on an estimated density, and the DP needs no derivative). The
result has the shape the design asks for: the first check shortly before most tasks
finish (checking earlier mostly costs a check and saves little delay), intervals
tightest where the density is highest, and wider again in the tail.

Plans are computed once per model and cached (:class:`DurationHistory`); the poller
only looks up the next planned time after the time already elapsed, which makes the
schedule robust to late checks, retried checks and restarts: it is keyed on time
since submission, not on how many checks happened.

Pure Python. Planning is a pure function of the samples; only :class:`DurationHistory`
reads a clock, to rate-limit rebuilds. No I/O: the caller feeds the durations.
"""

from __future__ import annotations

import bisect
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from actors.catalog import PollingSpec
from actors.polling import delay_before_check

#: Durations below this are treated as this (log-space smoothing needs t > 0).
_FLOOR = 1e-3
#: Kernel tails beyond this many bandwidths are treated as 0 or 1.
_KERNEL_REACH = 5.0


@attrs.frozen
class AdaptiveParams:
    """The trade-off and the safety rails of the adaptive plan.

    ``check_cost``: seconds of detection delay one check is worth. Higher means fewer
    checks and later detection. It is in absolute seconds because both sides are: a
    check spends a provider request and a rate-limit token whatever the model, and a
    user waits in seconds. On a lognormal with median 360 s and sigma 0.5, 5 gives
    about 5.7 checks and 27 s mean delay per task (fixed 60 s: 7.3 and 30); on a
    5 s image model, about 1.2 checks and 2 s.

    ``max_interval``: no two consecutive checks after the first are further apart
    than this, whatever the data says (a task is never left unwatched long), and it
    caps the exponential spacing of the tail beyond the observed durations.

    ``min_interval``: checks are at least this far apart (and the first comes no
    sooner), so a planning grid finer than a provider round trip cannot make the
    poller hammer the provider.

    ``tail_factor``: beyond the planned range, each interval is this times the
    previous one (capped at ``max_interval``): a task slower than almost everything
    seen before is an outlier whose end the data cannot predict.

    ``coverage``: the plan covers durations up to this quantile of the learned
    distribution; beyond it the tail spacing takes over.

    ``min_samples``: with fewer observed durations the distribution is a guess and
    the caller falls back to its exponential spec.
    """

    check_cost: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    max_interval: float = attrs.field(default=300.0, validator=attrs.validators.gt(0))
    min_interval: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    tail_factor: float = attrs.field(default=1.5, validator=attrs.validators.gt(1))
    coverage: float = attrs.field(default=0.995, validator=[attrs.validators.gt(0.5),
                                                             attrs.validators.lt(1)])
    min_samples: int = attrs.field(default=20, validator=attrs.validators.ge(2))

    @max_interval.validator
    def _check_interval_order(self, attribute: attrs.Attribute[float], value: float) -> None:
        if value < self.min_interval:
            raise ValueError("max_interval must be at least min_interval")


def params_from_spec(spec: PollingSpec, base: AdaptiveParams | None = None) -> AdaptiveParams:
    """The adaptive parameters a model's ``PollingSpec`` asks for.

    The spec's ``max_interval`` is the cap of every strategy (one knob per model), and
    its ``check_cost`` is the trade-off; everything else comes from ``base``. Mind
    that ``PollingSpec``'s default cap is 30 s: right for images, but for a
    six-minute video it forces checks every 30 s where 60-100 s would do, so an
    adaptive video model should say ``max_interval`` too.
    """
    base = base or AdaptiveParams()
    return attrs.evolve(
        base,
        check_cost=spec.check_cost,
        max_interval=max(spec.max_interval, base.min_interval),
    )


@attrs.frozen
class DurationModel:
    """A model's completion-time distribution, smoothed from observed durations.

    Smoothing is a Gaussian kernel in log time. Durations are positive and their
    noise is multiplicative (a busy provider makes everything 30% slower, not 30 s
    slower), so a kernel of fixed width in log space is proportionally wide: about
    as wide around a 5 s image as around a 6 min video, relatively. Smoothing keeps
    the plan from overfitting a small sample: with the raw empirical CDF the best
    plan checks exactly at the observed values, which is only optimal for the past.

    The bandwidth is Silverman's rule on the log durations or, when the samples
    predict each other better with it, a half, quarter... of it (see
    ``_best_bandwidth``), floored at ``min_bandwidth`` so that a history of identical
    durations (a sandbox with a fixed delay) still describes a little jitter instead
    of a point the plan would have to hit exactly.

    **Polling only sees intervals.** A polled task is known to have finished after
    the last check that saw it running and no later than the check that saw it done.
    Learning from the detection times alone is biased late by the detection delay,
    and the bias feeds back: a plan learned from them checks later, which makes the
    next detection times later still (in simulation, relearning from its own
    detections, the mean delay creeps from 32 s to 45 s over six rebuilds; from
    the intervals it stays at 26-28 s). ``from_observations`` takes such intervals as what
    they are, interval-censored durations, and estimates the distribution with the
    EMS algorithm (Silverman, Jones, Wilson and Nychka, 1990): spread each interval's
    observation over its bins in proportion to the current estimate (E), smooth the
    result with the kernel (S), repeat until it settles. Exact durations (a provider
    webhook, a provider-reported completion time) are used as they are.

    The estimate lives on a grid regular in log time, ``step`` apart from
    ``start``: ``counts`` per grid point (fractional for intervals), ``below`` the
    grid, and ``total`` observations in all (those above the grid count only there).
    """

    start: float  # log seconds of grid point 0
    step: float  # log seconds between grid points
    counts: tuple[float, ...]
    below: float
    total: float
    bandwidth: float
    median: float  # seconds, of the raw observations (intervals at their middle)

    @classmethod
    def from_durations(cls, durations: Iterable[float], **options: Any) -> DurationModel:
        """From exact durations; ``options`` as for :meth:`from_observations`."""
        return cls.from_observations(durations, (), **options)

    @classmethod
    def from_observations(
        cls,
        exact: Iterable[float],
        censored: Iterable[tuple[float, float]] = (),
        *,
        min_bandwidth: float = 0.05,
        span: float = 50.0,
        grid_points: int = 400,
        cross_validate: bool = True,
        iterations: int = 30,
    ) -> DurationModel:
        """Exact durations, and ``(seen_running, seen_done)`` intervals in seconds.

        Malformed values (negative, NaN, infinite, empty intervals) are skipped.
        ``span`` bounds the grid to ``median / span .. median * span`` so that a few
        absurd outliers (a job stuck for a day) cannot stretch it so much that it
        becomes too coarse where the tasks actually finish; ``grid_points`` bounds
        its size. Cross-validation of the bandwidth needs exact values: with
        intervals in the history, Silverman's rule on their middles is used.
        """
        logs = sorted(math.log(max(float(d), _FLOOR)) for d in exact
                      if math.isfinite(d) and d >= 0)
        spans = [(max(float(lo), 0.0), float(hi)) for lo, hi in censored
                 if math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi]
        middles = sorted(logs + [math.log(max((lo + hi) / 2, _FLOOR)) for lo, hi in spans])
        if len(middles) < 2:
            raise ValueError("need at least two finite, non-negative durations")
        sd = statistics.stdev(middles)
        q1, _, q3 = statistics.quantiles(middles, n=4, method="inclusive")
        spread = min(sd, (q3 - q1) / 1.349) or sd  # robust to outliers unless IQR is 0
        h = max(0.9 * spread * len(middles) ** -0.2, min_bandwidth)
        if cross_validate and not spans:
            candidates = [h]
            while candidates[-1] / 2 >= min_bandwidth and len(candidates) < 5:
                candidates.append(candidates[-1] / 2)
            h = _best_bandwidth(logs, candidates)

        log_median = statistics.median(middles)
        ends = logs + [math.log(max(x, _FLOOR)) for lo, hi in spans for x in (lo, hi) if x > 0]
        a = max(min(ends) - 4 * h, log_median - math.log(span))
        b = min(max(ends) + 4 * h, log_median + math.log(span))
        # At most grid_points points, and none finer than a twelfth of the kernel.
        step = max((b - a) / (grid_points - 1), h / 12)
        m = int((b - a) / step) + 1

        counts = [0.0] * m
        below = 0.0
        for s in logs:
            k = round((s - a) / step)
            if k < 0:
                below += 1
            elif k < m:
                counts[k] += 1
        # Intervals, as grid index ranges, with how many observations share each.
        ranges: dict[tuple[int, int], int] = {}
        for lo, hi in spans:
            k_hi = math.floor((math.log(hi) - a) / step) if hi > _FLOOR else -1
            k_lo = math.floor((math.log(lo) - a) / step) + 1 if lo > _FLOOR else 0
            if k_hi < 0:
                below += 1
                continue
            if k_lo >= m:
                continue  # wholly above the grid
            k_lo, k_hi = max(k_lo, 0), min(k_hi, m - 1)
            if k_lo > k_hi:  # narrower than a grid step
                k_lo = k_hi = min(max(round((math.log((lo + hi) / 2) - a) / step), 0), m - 1)
            ranges[k_lo, k_hi] = ranges.get((k_lo, k_hi), 0) + 1

        if ranges:
            # Start from "uniform in time within each interval", then EMS.
            weight = [math.exp(a + k * step) for k in range(m)]
            exact_counts = counts
            pdf = _gaussian_taps(h / step)
            previous: list[float] | None = None
            for _ in range(iterations):
                counts = list(exact_counts)
                for (k_lo, k_hi), number in ranges.items():
                    ws = weight[k_lo:k_hi + 1]
                    norm = sum(ws)
                    if norm <= 0:
                        ws, norm = [1.0] * len(ws), float(len(ws))
                    for k, w in enumerate(ws, k_lo):
                        counts[k] += number * w / norm
                if previous is not None and max(
                        abs(x - y) for x, y in zip(counts, previous)) < 1e-3:
                    break  # no bin moved by a thousandth of an observation
                previous = counts
                weight = _convolve(counts, pdf)

        return cls(start=a, step=step, counts=tuple(counts), below=below,
                   total=float(len(logs) + len(spans)), bandwidth=h,
                   median=math.exp(log_median))

    @property
    def count(self) -> int:
        """Observations the model was built from."""
        return int(self.total)

    def grid(self) -> list[float]:
        """The grid, in seconds."""
        return [math.exp(self.start + k * self.step) for k in range(len(self.counts))]

    def cdf_on_grid(self) -> list[float]:
        """Smoothed P(duration <= t) at every grid point: the binned observations
        convolved with the kernel's CDF (bins more than its reach below a point
        count fully, those within reach partly)."""
        m = len(self.counts)
        reach = math.ceil(_KERNEL_REACH * self.bandwidth / self.step)
        kernel = [_phi(j * self.step / self.bandwidth) for j in range(-reach, reach + 1)]
        cumulative = [0.0] * (m + 1)
        for k in range(m):
            cumulative[k + 1] = cumulative[k] + self.counts[k]
        cdf = []
        for g in range(m):
            full = cumulative[max(0, g - reach)]
            part = 0.0
            for k in range(max(0, g - reach), min(m, g + reach + 1)):
                if self.counts[k]:
                    part += self.counts[k] * kernel[g - k + reach]
            cdf.append(min(1.0, (self.below + full + part) / self.total))
        return cdf

    def cdf(self, t: float) -> float:
        """Smoothed P(duration <= t) at any ``t``; for tests and diagnostics."""
        if t <= 0:
            return 0.0
        x = math.log(t)
        h = self.bandwidth
        total = self.below
        for k, w in enumerate(self.counts):
            if w:
                total += w * _phi((x - self.start - k * self.step) / h)
        return min(1.0, total / self.total)


def _gaussian_taps(width: float) -> list[float]:
    """A normalised discrete Gaussian of standard deviation ``width`` grid steps."""
    reach = max(1, math.ceil(4 * width))
    taps = [math.exp(-0.5 * (j / width) ** 2) for j in range(-reach, reach + 1)]
    norm = sum(taps)
    return [t / norm for t in taps]


def _convolve(values: list[float], taps: list[float]) -> list[float]:
    reach = len(taps) // 2
    m = len(values)
    out = [0.0] * m
    for k, v in enumerate(values):
        if v:
            for j in range(max(0, k - reach), min(m, k + reach + 1)):
                out[j] += v * taps[j - k + reach]
    return out


def _best_bandwidth(logs: list[float], candidates: list[float],
                    contamination: float = 0.05) -> float:
    """The candidate bandwidth under which the samples best predict each other.

    Leave-one-out likelihood cross-validation, binned so that it costs about as much
    as one convolution per candidate. Silverman's rule (the first candidate) is
    right for one bell-shaped cluster but smears a bimodal history (warm starts at
    10 s, cold starts at 3 min) into one wide hump, which puts the checks between
    the modes where nothing finishes; the likelihood notices. The density is mixed
    with ``contamination`` of a uniform over the observed range so that one isolated
    outlier, which no small bandwidth can explain, does not veto every small one.

    A narrower candidate must beat the current choice by ``sqrt(n)`` in total
    log-likelihood, not merely beat it: on one smooth cluster halving the bandwidth
    wins or loses by sampling noise (a few thousandths per sample at n = 1000, up
    to 0.15 at n = 20), and a plan fitted to noise bumps checks where the next
    tasks will not finish. Genuinely separate modes win by tenths per sample.
    """
    n = len(logs)
    lo, hi = logs[0], logs[-1]
    width = max(hi - lo, 1e-9)
    floor = contamination / width
    best, best_score = candidates[0], -math.inf
    for h in candidates:
        delta = h / 4
        m = int(width / delta) + 1
        counts: dict[int, int] = {}
        for s in logs:
            k = min(int((s - lo) / delta), m - 1)
            counts[k] = counts.get(k, 0) + 1
        reach = int(_KERNEL_REACH * 4)
        kernel = [math.exp(-0.5 * (j / 4) ** 2) for j in range(reach + 1)]
        norm = (n - 1) * h * math.sqrt(2 * math.pi)
        score = 0.0
        for k, w in counts.items():
            total = -1.0  # leave the sample itself out
            for j in range(-reach, reach + 1):
                other = counts.get(k + j)
                if other:
                    total += other * kernel[abs(j)]
            density = (1 - contamination) * max(total, 0.0) / norm + floor
            score += w * math.log(density)
        if score > best_score + math.sqrt(n) or best_score == -math.inf:
            best, best_score = h, score
        else:
            break
    return best


def _phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


@attrs.frozen
class AdaptiveSchedule:
    """Planned check times (seconds since submission), then an exponential tail.

    ``offsets`` are the planned checks, strictly increasing. After the last one the
    gaps are ``tail_gaps`` (growing by ``tail_factor``), and after those, every
    ``max_interval`` for ever. ``expected_checks`` and ``expected_delay`` are the
    plan's own forecast for the learned distribution (within the planned range),
    useful to log next to what the poller then measures.
    """

    offsets: tuple[float, ...]
    tail_gaps: tuple[float, ...]
    max_interval: float
    min_interval: float
    expected_checks: float
    expected_delay: float
    samples: int

    def check_times(self) -> Iterator[float]:
        """Every check time of the plan, in order, without end."""
        yield from self.offsets
        t = self.offsets[-1]
        for gap in self.tail_gaps:
            t += gap
            yield t
        while True:
            t += self.max_interval
            yield t

    def next_check_at(self, elapsed: float) -> float:
        """The first planned check at least ``min_interval`` after ``elapsed``.

        Keyed on time, not on the number of checks done, so a late, retried or
        post-restart check lands back on the plan instead of shifting it.
        """
        earliest = max(elapsed, 0.0) + self.min_interval
        i = bisect.bisect_left(self.offsets, earliest)
        if i < len(self.offsets):
            return self.offsets[i]
        t = self.offsets[-1]
        for gap in self.tail_gaps:
            t += gap
            if t >= earliest:
                return t
        steps = max(1, math.ceil((earliest - t) / self.max_interval - 1e-9))
        return t + steps * self.max_interval


def plan_schedule(model: DurationModel, params: AdaptiveParams = AdaptiveParams()
                  ) -> AdaptiveSchedule:
    """The check times minimising ``check_cost * E[checks] + E[delay]`` for ``model``.

    Candidate times are the model's grid, regular in log time (fine where durations
    are small, coarse where a few seconds do not matter), up to the ``coverage``
    quantile. On it the smoothed CDF ``F`` is a convolution of the binned durations
    with the kernel, and ``I`` (the integral of ``F``) a running trapezoid sum, so
    every interval's cost is O(1) and the DP is O(grid x intervals within
    max_interval). The last planned check is forced at the end of the grid; the tail
    beyond is spaced exponentially from the last planned gap, because there the data
    no longer says anything.
    """
    cdf = model.cdf_on_grid()
    grid = model.grid()
    m = len(grid)

    # Plan only up to the coverage quantile, and at least up to min_interval.
    end = bisect.bisect_left(cdf, params.coverage)
    end = min(end, m - 1)
    ts = grid[: end + 1]
    fs = cdf[: end + 1]
    if ts[-1] < params.min_interval:
        ts.append(params.min_interval)
        fs.append(fs[-1])
    # Node 0 is the submission itself (t = 0, F = 0, I = 0).
    ts = [0.0] + ts
    fs = [0.0] + fs
    integral = [0.0] * len(ts)
    integral[1] = fs[1] * ts[1] / 2  # the mass below the grid, spread evenly
    for k in range(2, len(ts)):
        integral[k] = integral[k - 1] + (ts[k] - ts[k - 1]) * (fs[k] + fs[k - 1]) / 2

    c = params.check_cost
    inf = math.inf
    best = [inf] * len(ts)
    prev = [0] * len(ts)
    best[0] = 0.0
    lo_min = 0  # first node within max_interval of t_j; only grows with j
    for j in range(1, len(ts)):
        tj = ts[j]
        if tj < params.min_interval:
            continue
        # Origin: the first check may come at any time (it is not an interval).
        best[j] = c + integral[j]
        prev[j] = 0
        # Predecessors i with min_interval <= tj - ti <= max_interval.
        hi = bisect.bisect_right(ts, tj - params.min_interval, 1, j)
        while lo_min < j and ts[lo_min] < tj - params.max_interval:
            lo_min += 1
        lo = max(lo_min, 1)
        if lo >= hi and hi > 1:
            lo = hi - 1  # grid too sparse here for the cap; subdivided afterwards
        for i in range(lo, hi):
            if best[i] == inf:
                continue
            fi = fs[i]
            cost = best[i] + c * (1 - fi) + integral[j] - integral[i] - (tj - ts[i]) * fi
            if cost < best[j]:
                best[j] = cost
                prev[j] = i

    last = len(ts) - 1
    path = []
    j = last
    while j:
        path.append(j)
        j = prev[j]
    path.reverse()
    checks = 0.0
    delay = 0.0
    i = 0
    for j in path:
        checks += 1 - fs[i]
        delay += integral[j] - integral[i] - (ts[j] - ts[i]) * fs[i]
        i = j

    offsets: list[float] = []
    for j in path:
        t = ts[j]
        if offsets and t - offsets[-1] > params.max_interval:
            # Only where the grid is coarser than the cap: split evenly.
            start = offsets[-1]
            pieces = math.ceil((t - start) / params.max_interval)
            offsets.extend(start + (t - start) * k / pieces for k in range(1, pieces))
        offsets.append(t)

    # The tail continues from the last planned gap (with a single planned check,
    # a quarter of its time: a task past everything seen is checked soon again,
    # then less and less often).
    last_gap = offsets[-1] - offsets[-2] if len(offsets) > 1 else offsets[-1] / 4
    gap = min(max(last_gap, params.min_interval), params.max_interval)
    tail: list[float] = []
    while gap < params.max_interval:
        tail.append(gap)
        gap *= params.tail_factor
    return AdaptiveSchedule(
        offsets=tuple(offsets),
        tail_gaps=tuple(tail),
        max_interval=params.max_interval,
        min_interval=params.min_interval,
        expected_checks=checks,
        expected_delay=delay,
        samples=model.count,
    )


def next_check_at(schedule: AdaptiveSchedule, elapsed: float) -> float:
    """Seconds since submission of the next check after ``elapsed`` seconds."""
    return schedule.next_check_at(elapsed)


def adaptive_delay(schedule: AdaptiveSchedule | None, elapsed: float, checks_done: int,
                   fallback: PollingSpec) -> float:
    """Seconds to wait from now (``elapsed`` seconds after submission) to the next check.

    ``schedule`` is None while the model has too few finished jobs; then the model's
    own spec decides, as exponential (its ``first_check``, ``initial``, ``factor``,
    ``max_interval``), by the number of checks done.
    """
    if schedule is None:
        return delay_before_check(fallback, checks_done)
    return schedule.next_check_at(elapsed) - max(elapsed, 0.0)


@attrs.define
class _Cached:
    schedule: AdaptiveSchedule
    params: AdaptiveParams
    built_at: float
    built_from: int  # total samples ever added when built


class DurationHistory:
    """The last ``window`` completions of each model, and their plans.

    Feed it ``add(model, seconds, seen_running)`` for each finished job (the caller
    loads the recent ones from SQLite at start). ``seconds`` is from the job's start
    to the moment its end was seen; ``seen_running`` is from its start to the last
    check that saw it still running (0 when the first check already saw it done).
    Give ``seen_running`` whenever the end was seen by polling: see
    :class:`DurationModel` for why detection times alone drift later and later.
    Leave it None only for exact completion times (a webhook, a time reported by
    the provider). Measure both from the same origin as the poller's ``elapsed``,
    and not up to ``completed_at`` when that includes downloading the outputs.
    Jobs that timed out are not completions and should not be added; leaving them
    out biases the tail slightly short, which the exponential tail absorbs.

    Planning costs milliseconds of CPU (tens with many intervals: it is pure
    Python), so a plan is rebuilt only when it is stale enough to matter: when at
    least ``refresh_fraction`` of the window is new since the last build (every
    other completion while the history is small, every 100 once it holds 1000) and
    ``refresh_seconds`` have passed, or at once when the parameters change or the
    model first reaches ``min_samples``.
    """

    def __init__(self, window: int = 1000, params: AdaptiveParams = AdaptiveParams(),
                 refresh_fraction: float = 0.1, refresh_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window < params.min_samples:
            raise ValueError("window must hold at least min_samples durations")
        self.window = window
        self.params = params
        self.refresh_fraction = refresh_fraction
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._samples: dict[str, deque[tuple[float | None, float]]] = {}
        self._added: dict[str, int] = {}
        self._cache: dict[str, _Cached] = {}

    def add(self, model: str, seconds: float, seen_running: float | None = None) -> bool:
        """Record one completion; False (and ignored) if it is not a duration
        (negative from a wall-clock step, NaN, infinite, ``seen_running`` not
        before ``seconds``)."""
        if not math.isfinite(seconds) or seconds < 0:
            return False
        if seen_running is not None and not (
                math.isfinite(seen_running) and 0 <= seen_running < seconds):
            return False
        samples = self._samples.get(model)
        if samples is None:
            samples = self._samples[model] = deque(maxlen=self.window)
        samples.append((None if seen_running is None else float(seen_running),
                        float(seconds)))
        self._added[model] = self._added.get(model, 0) + 1
        return True

    def count(self, model: str) -> int:
        return len(self._samples.get(model, ()))

    def schedule_for(self, model: str, params: AdaptiveParams | None = None
                     ) -> AdaptiveSchedule | None:
        """The model's current plan, or None below ``min_samples`` (fall back)."""
        params = params or self.params
        samples = self._samples.get(model)
        if samples is None or len(samples) < params.min_samples:
            return None
        cached = self._cache.get(model)
        added = self._added[model]
        if cached is not None and cached.params == params:
            fresh = added - cached.built_from
            due = max(1, math.ceil(self.refresh_fraction * len(samples)))
            if fresh < due or self._clock() - cached.built_at < self.refresh_seconds:
                return cached.schedule
        exact = [hi for lo, hi in samples if lo is None]
        censored = [(lo, hi) for lo, hi in samples if lo is not None]
        schedule = plan_schedule(DurationModel.from_observations(exact, censored), params)
        self._cache[model] = _Cached(schedule, params, self._clock(), added)
        return schedule

    def delay(self, model: str, spec: PollingSpec, elapsed: float, checks_done: int) -> float:
        """Seconds to wait before the next check of a task of ``model`` that has run
        for ``elapsed`` seconds: the poller's one call for an adaptive model."""
        schedule = self.schedule_for(model, params_from_spec(spec, self.params))
        return adaptive_delay(schedule, elapsed, checks_done, spec)

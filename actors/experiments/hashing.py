"""Which variant a unit gets: GrowthBook's hashing, bucket ranges and namespaces.

Assignment must be deterministic (the same unit always lands in the same place),
well mixed (neighbouring ids spread evenly), and checkable against someone else's
numbers. So it is GrowthBook's scheme, bit for bit, tested against the test vectors
GrowthBook publishes for its SDKs:

- the hash is FNV-1a 32-bit over the string's characters (their code points, as
  GrowthBook's Python SDK does; its JavaScript SDK hashes UTF-16 code units, which
  differ only for characters outside the Basic Multilingual Plane);
- version 2, the one assignment uses: ``fnv1a32(str(fnv1a32(seed + unit))) % 10000
  / 10000``, a number in [0, 1) with four decimals (GrowthBook moved to it because
  version 1's buckets were correlated across experiments with similar seeds);
  version 1, ``fnv1a32(unit + seed) % 1000 / 1000``, is what namespaces use;
- the weights become consecutive ranges of [0, 1), each shrunk to ``coverage`` of
  its width from its start (so when coverage grows, a covered unit stays covered
  and keeps its variant);
- a namespace is a second hash of the unit (version 1, seed ``"__" + namespace``):
  experiments sharing a namespace and owning disjoint ranges of it never enrol the
  same unit.

**The unit.** Assignment is per unit, and stickiness means per unit too. The unit
is the submission's user id when it sends one; without it, the API key id the job
was submitted with (so one integration keeps one variant); without a key either
(keys not in force), the job id, and then every job is its own unit: still a fair
randomisation, but a person who retries lands anywhere. ``unit_for`` is that rule;
the fallbacks are prefixed (``key:``, ``job:``) so they never collide with a user id.

**Phases.** The seed is the experiment's ``seed`` (its id when empty). Any change
to the shares of new traffic (a person changing the weights, adding, removing or
pausing a variant, or a bandit re-weighting, see ``bandit.apply_decision``) starts
a new *phase*: ``phase_seed`` then gains the phase number, so units not yet
assigned are re-bucketed with a fresh, independent hash instead of inheriting
positions drawn under the old ranges. Units already assigned keep their stored
``Assignment`` (which records its phase), so nobody enrolled moves. Within one
phase the weights are constant, so the sample-ratio check can compare each phase's
assignments with that phase's weights; and within one phase a unit's hash never
changes (only units between an old and a new range boundary would change variant,
and those too keep their stored assignment).
"""

from __future__ import annotations

from collections.abc import Sequence

from actors.experiments.model import Experiment, Variant

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193

#: ``(namespace id, start, end)``: the unit is in it when start <= hash < end.
Namespace = tuple[str, float, float]


def fnv1a32(text: str) -> int:
    """FNV-1a, 32 bits, over the code points of ``text``."""
    value = _FNV_OFFSET
    for char in text:
        value = ((value ^ ord(char)) * _FNV_PRIME) & 0xFFFFFFFF
    return value


def hash_unit(seed: str, unit: str, version: int = 2) -> float:
    """GrowthBook's hash of ``unit`` under ``seed``: a number in [0, 1).

    Raises ValueError for a version GrowthBook does not define (its SDKs answer
    null there, meaning "not in the experiment").
    """
    if version == 2:
        return (fnv1a32(str(fnv1a32(seed + unit))) % 10000) / 10000
    if version == 1:
        return (fnv1a32(unit + seed) % 1000) / 1000
    raise ValueError(f"unknown hash version {version}")


def equal_weights(n_variants: int) -> list[float]:
    return [1 / n_variants] * n_variants if n_variants > 0 else []


def bucket_ranges(
    n_variants: int, coverage: float = 1.0, weights: Sequence[float] | None = None
) -> list[tuple[float, float]]:
    """GrowthBook's ``getBucketRanges``: one ``[start, end)`` per variant.

    As GrowthBook does, weights that are missing, of the wrong length, or whose sum
    is not within 0.99..1.01 are replaced by equal weights (they are not rescaled:
    callers that hold raw weights normalise them first, as ``assign`` does), and
    coverage is clamped to 0..1.
    """
    coverage = min(max(coverage, 0.0), 1.0)
    if weights is None or len(weights) != n_variants or not 0.99 <= sum(weights) <= 1.01:
        weights = equal_weights(n_variants)
    ranges = []
    cumulative = 0.0
    for weight in weights:
        start = cumulative
        cumulative += weight
        ranges.append((start, start + coverage * weight))
    return ranges


def choose_variant(n: float, ranges: Sequence[tuple[float, float]]) -> int:
    """The index of the range holding ``n``, or -1 when it is outside coverage."""
    for index, (start, end) in enumerate(ranges):
        if start <= n < end:
            return index
    return -1


def in_namespace(unit: str, namespace: Namespace) -> bool:
    """Whether ``unit`` falls in this experiment's range of a shared namespace."""
    namespace_id, start, end = namespace
    return start <= hash_unit("__" + namespace_id, unit, version=1) < end


def unit_for(user_id: str | None, key_id: str | None, job_id: str) -> str:
    """The unit a submission is assigned by: its user, else its API key, else itself."""
    if user_id:
        return user_id
    if key_id:
        return "key:" + key_id
    return "job:" + job_id


def phase_seed(experiment: Experiment) -> str:
    """The hash seed of the experiment's current phase.

    Phase 0 hashes with the plain seed (so an experiment that never changed
    assigns exactly as a GrowthBook SDK with that seed would); phase N with
    ``"<seed>:<N>"``, a fresh and independent bucketing for units not yet assigned.
    """
    seed = experiment.seed or experiment.id
    return seed if experiment.phase == 0 else f"{seed}:{experiment.phase}"


def traffic_shares(experiment: Experiment) -> dict[str, float]:
    """Each active (not paused) variant's share of new units, in order; sums to 1.

    The variants' weights scaled to sum to 1 (equal when they sum to nothing).
    """
    active = [variant for variant in experiment.variants if not variant.paused]
    total = sum(max(variant.weight, 0.0) for variant in active)
    return {
        variant.id: max(variant.weight, 0.0) / total if total > 0 else 1 / len(active)
        for variant in active
    }


def assign(experiment: Experiment, unit: str) -> Variant | None:
    """The variant ``unit`` gets in the current phase, or None when not enrolled.

    None when the unit is outside the experiment's range of its namespace, outside
    coverage (it stays on the model it asked for), or when every variant is paused.
    Paused variants take no new units: the ranges are laid over the others. This is
    the hash alone; a unit with a stored assignment keeps that one instead.
    """
    if experiment.namespace is not None:
        start, end = experiment.namespace_range
        if not in_namespace(unit, (experiment.namespace, start, end)):
            return None
    shares = traffic_shares(experiment)
    ranges = bucket_ranges(len(shares), experiment.coverage, list(shares.values()))
    index = choose_variant(hash_unit(phase_seed(experiment), unit), ranges)
    if index < 0:
        return None
    chosen = list(shares)[index]
    return next(variant for variant in experiment.variants if variant.id == chosen)

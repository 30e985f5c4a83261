"""``ExperimentService``: the experiments as the HTTP API and the admin pages use
them (``runtime.experiments``), and the in-memory view enrolment reads.

It owns the cache of experiments that can take traffic (RUNNING ones, by the
model they match), refreshed from the store after every change it makes, so a
submission costs no read to learn whether an experiment wants it.

An experiment is checked whole when it is created, not when traffic arrives:
every variant's model must be in the catalog (and of the same kind as the others)
and its parameters must pass that model's rules; every problem is reported at
once, each naming its variant. The request's shape (``create``)::

    {"name": "...", "description": "...",
     "variants": [{"id": "A", "name": "...", "modelIdentifier": "flux-dev",
                   "promptTemplate": "{prompt}, studio light",   # or "prompt": fixed text
                   "parameters": {...}, "weight": 1}, ...],
     "trafficAllocation": 100,                # percent of matching units enrolled
     "metrics": [{"name": "success_rate", "type": "primary", "goal": "maximize"}],
     "match": "flux-dev",                     # enrol submissions for this model
     "namespace": "homepage", "namespaceRange": [0, 0.5],
     "allocation": "fixed" | "bandit",
     "bandit": {"metric": "success_rate", "floor": 0.01, "minSamples": 100,
                "cadence": 3600, "pauseBelow": null, "pauseAfter": 3, "winAt": 0.95},
     "budget": 500, "segmentAttribute": "plan", "minSample": 100, "sequential": false,
     # multivariate, instead of variants: every combination of the levels
     # (actors/experiments/factorial.py), the match model unless "model" is a factor
     "factors": {"model": ["flux-dev", "flux-pro"], "parameters.steps": [20, 40],
                 "prompt_template": ["{prompt}", "{prompt}, studio light"]},
     "fractional": false}

Its life: DRAFT -> RUNNING (start) <-> PAUSED (pause, start) -> COMPLETED
(complete, from any other state); any other move is CONFLICT. Changing the
weights starts a new phase: units not yet assigned are bucketed afresh, units
already assigned keep their variant.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from actors.catalog import ModelSpec
from actors.clock import wall_now
from actors.errors import EaselError, ErrorCode
from actors.experiments import analysis, factorial
from actors.experiments.bandit import BanditDecision, apply_decision
from actors.experiments.hashing import traffic_shares
from actors.experiments.model import (
    Allocation,
    BanditSettings,
    Experiment,
    ExperimentState,
    Goal,
    Metric,
    MetricName,
    Results,
    Role,
    Variant,
    new_experiment_id,
)
from actors.jobs import Job, JobState, iso
from actors.parameters import check_parameters
from actors.store import Store
from actors.validation import (
    MAX_PROMPT,
    PARAMETERS_BOUNDS,
    bounds_problems,
    invalid_parameters,
    rules_for,
)

MAX_VARIANTS = 32
MAX_NAME = 200
MAX_DESCRIPTION = 4000
#: Variant ids and segment attributes: short, plain names.
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
PROMPT_SLOT = "{prompt}"

#: Which states each action may start from.
_MOVES: dict[str, tuple[frozenset[ExperimentState], ExperimentState]] = {
    "start": (frozenset({ExperimentState.DRAFT, ExperimentState.PAUSED}),
              ExperimentState.RUNNING),
    "pause": (frozenset({ExperimentState.RUNNING}), ExperimentState.PAUSED),
    "complete": (frozenset({ExperimentState.DRAFT, ExperimentState.RUNNING,
                            ExperimentState.PAUSED}), ExperimentState.COMPLETED),
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class _Reader:
    """Reads the fields of a request object, collecting every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def text(self, body: Mapping[str, Any], key: str, path: str, *, limit: int,
             required: bool = False) -> str | None:
        value = body.get(key)
        if value is None:
            if required:
                self.problems.append(f"{path}: required")
            return None
        if type(value) is not str or (required and not value.strip()) or len(value) > limit:
            self.problems.append(f"{path}: must be a string of at most {limit} characters"
                                 + (", not empty" if required else ""))
            return None
        return value

    def number(self, body: Mapping[str, Any], key: str, path: str, low: float,
               high: float) -> float | None:
        value = body.get(key)
        if value is None:
            return None
        number = _number(value)
        if number is None or not low <= number <= high:
            self.problems.append(f"{path}: must be a number from {low:g} to {high:g}")
            return None
        return number

    def choice(self, body: Mapping[str, Any], key: str, path: str, enum: Any,
               default: Any) -> Any:
        value = body.get(key)
        if value is None:
            return default
        try:
            return enum(value)
        except ValueError:
            self.problems.append(f"{path}: must be one of "
                                 + ", ".join(member.value for member in enum))
            return default


class ExperimentService:
    """Experiments: created, changed and read here; cached for enrolment."""

    def __init__(self, store: Store, catalog: Mapping[str, ModelSpec],
                 families: Mapping[str, str]) -> None:
        self.store = store
        self.catalog = catalog
        self.families = families
        #: RUNNING experiments, oldest first (what enrolment looks through).
        self._running: list[Experiment] = []
        #: Bandit experiments: the last chance of each arm to be best.
        self.p_best: dict[str, dict[str, float]] = {}
        #: Set (and replaced) each time the running experiments are reloaded.
        self.changed = trio.Event()

    # -- the cache ------------------------------------------------------------

    async def refresh(self) -> None:
        """Reload the running experiments from the store (at start, and after every
        change made here)."""
        every = await self.store.list_experiments()
        self._running = [e for e in every if e.state is ExperimentState.RUNNING]
        changed, self.changed = self.changed, trio.Event()
        changed.set()

    def running(self) -> list[Experiment]:
        """The experiments taking traffic now, oldest first (from memory)."""
        return self._running

    # -- creating -------------------------------------------------------------

    async def create(self, body: Any, owner: str | None = None) -> Experiment:
        """A new DRAFT experiment from ``body`` (the shape in the module doc), checked
        whole: INVALID_REQUEST for a body that is not an object, INVALID_PARAMETERS
        listing every problem otherwise."""
        experiment = self.parse(body, owner)
        await self.store.save_experiment(experiment)
        return experiment

    def parse(self, body: Any, owner: str | None = None) -> Experiment:
        """``body`` as an experiment (not stored), or the error listing its problems."""
        if not isinstance(body, dict):
            raise EaselError(ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
        problems: list[str] = []
        read = _Reader(problems)
        name = read.text(body, "name", "name", limit=MAX_NAME, required=True) or ""
        description = read.text(body, "description", "description", limit=MAX_DESCRIPTION) or ""
        coverage = read.number(body, "trafficAllocation", "trafficAllocation", 0, 100)
        match = read.text(body, "match", "match", limit=200)
        if match is not None and match not in self.catalog:
            problems.append(f"match: unknown model {match!r}")
        variants = self._variants(body, read)
        metrics = self._metrics(body.get("metrics"), read)
        namespace = read.text(body, "namespace", "namespace", limit=64)
        namespace_range = self._range(body.get("namespaceRange"), problems)
        allocation = read.choice(body, "allocation", "allocation", Allocation, Allocation.FIXED)
        bandit = self._bandit(body.get("bandit"), read)
        budget = read.number(body, "budget", "budget", 0, math.inf)
        segment = read.text(body, "segmentAttribute", "segmentAttribute", limit=64)
        if segment is not None and not _NAME.match(segment):
            problems.append("segmentAttribute: letters, digits and _.:- only")
        min_sample = body.get("minSample", 100)
        if type(min_sample) is not int or min_sample < 1:
            problems.append("minSample: must be a whole number of at least 1")
        sequential = body.get("sequential", False)
        if type(sequential) is not bool:
            problems.append("sequential: must be true or false")
        seed = read.text(body, "seed", "seed", limit=200) or ""
        known = {"name", "description", "trafficAllocation", "match", "variants", "metrics",
                 "namespace", "namespaceRange", "allocation", "bandit", "budget",
                 "segmentAttribute", "minSample", "sequential", "seed", "factors",
                 "fractional"}
        problems += [f"{key}: unknown field" for key in body if key not in known]
        if problems:
            raise invalid_parameters(problems)
        now = wall_now()
        experiment_id = new_experiment_id()
        return Experiment(
            id=experiment_id, name=name, description=description, variants=variants,
            metrics=metrics, match_model=match,
            coverage=1.0 if coverage is None else coverage / 100, seed=seed,
            namespace=namespace, namespace_range=namespace_range, allocation=allocation,
            bandit=bandit, budget=budget, segment_attribute=segment, min_sample=min_sample,
            sequential=sequential, owner=owner, created_at=now, updated_at=now,
        )

    def _variants(self, body: Mapping[str, Any], read: _Reader) -> list[Variant]:
        problems = read.problems
        given = body.get("variants")
        factors = body.get("factors")
        if factors is not None:
            if given is not None:
                problems.append("variants: give either variants or factors, not both")
                return []
            fractional = body.get("fractional", False)
            if not isinstance(factors, dict) or type(fractional) is not bool or not all(
                    type(levels) is list for levels in factors.values()):
                problems.append("factors: must be an object of factor -> list of levels,"
                                " fractional true or false")
                return []
            match = body.get("match")
            try:
                expanded = factorial.expand(
                    factors, model=match if type(match) is str else None, fractional=fractional)
            except EaselError as exc:
                problems.append(f"factors: {exc.info.message}")
                return []
            given = [{"id": v.id, "name": v.name, "modelIdentifier": v.model,
                      "promptTemplate": v.prompt_template, "parameters": v.parameters,
                      "factors": v.factors} for v in expanded]
        if type(given) is not list or not 2 <= len(given) <= MAX_VARIANTS:
            problems.append(f"variants: must be a list of 2 to {MAX_VARIANTS} variants")
            return []
        variants: list[Variant] = []
        kinds: set[Any] = set()
        for index, item in enumerate(given):
            path = f"variants[{index}]"
            if not isinstance(item, dict):
                problems.append(f"{path}: must be an object")
                continue
            variant = self._variant(item, index, path, read)
            if variant is not None:
                variants.append(variant)
                kinds.add(self.catalog[variant.model].kind)
        ids = [variant.id for variant in variants]
        if len(set(ids)) != len(ids):
            problems.append("variants: ids must be unique")
        if len(kinds) > 1:
            problems.append("variants: all models must make the same kind of media")
        match = body.get("match")
        if type(match) is str and match in self.catalog and kinds and \
                self.catalog[match].kind not in kinds:
            problems.append("match: must make the same kind of media as the variants")
        if variants and sum(variant.weight for variant in variants) <= 0:
            problems.append("variants: the weights must not all be 0")
        return variants

    def _variant(self, item: Mapping[str, Any], index: int, path: str,
                 read: _Reader) -> Variant | None:
        problems = read.problems
        before = len(problems)
        variant_id = read.text(item, "id", f"{path}.id", limit=64) or factorial.variant_letter(index)
        if not _NAME.match(variant_id):
            problems.append(f"{path}.id: letters, digits and _.:- only")
        name = read.text(item, "name", f"{path}.name", limit=MAX_NAME) or variant_id
        model = read.text(item, "modelIdentifier", f"{path}.modelIdentifier", limit=200,
                          required=True)
        template = read.text(item, "promptTemplate", f"{path}.promptTemplate", limit=MAX_PROMPT)
        prompt = read.text(item, "prompt", f"{path}.prompt", limit=MAX_PROMPT)
        if template is not None and PROMPT_SLOT not in template:
            problems.append(f"{path}.promptTemplate: must contain {PROMPT_SLOT}")
        if template is not None and prompt is not None:
            problems.append(f"{path}: give prompt or promptTemplate, not both")
        weight = read.number(item, "weight", f"{path}.weight", 0, 1e6)
        parameters = item.get("parameters", {})
        if not isinstance(parameters, dict):
            problems.append(f"{path}.parameters: must be an object")
            parameters = {}
        else:
            problems += bounds_problems(f"{path}.parameters", parameters, PARAMETERS_BOUNDS)
        variant_factors = item.get("factors", {})
        if not isinstance(variant_factors, dict):
            variant_factors = {}
        problems += [f"{path}.{key}: unknown field" for key in item
                     if key not in {"id", "name", "modelIdentifier", "promptTemplate", "prompt",
                                    "weight", "parameters", "factors"}]
        if model is not None and model not in self.catalog:
            problems.append(f"{path}.modelIdentifier: unknown model {model[:200]!r}")
        elif model is not None and len(problems) == before:
            problems += [f"{path}.{problem}" for problem in self.parameter_problems(
                model, parameters)]
        if len(problems) > before or model is None:
            return None
        return Variant(id=variant_id, model=model, name=name,
                       prompt_template=template if template is not None else prompt,
                       parameters=dict(parameters), weight=1.0 if weight is None else weight,
                       factors={str(k): str(v) for k, v in variant_factors.items()})

    def parameter_problems(self, model: str, parameters: dict[str, Any], *,
                           number_of_outputs: int = 1, outputs_given: bool = False,
                           input_images: list[str] | None = None) -> list[str]:
        """What ``model``'s rules say of ``parameters`` (``check_parameters``)."""
        return self.checked(model, parameters, number_of_outputs=number_of_outputs,
                            outputs_given=outputs_given, input_images=input_images or [],
                            ).problems

    def checked(self, model: str, parameters: dict[str, Any], *, number_of_outputs: int,
                outputs_given: bool, input_images: list[str]) -> Any:
        spec = self.catalog[model]
        family = self.families.get(spec.provider, spec.provider)
        return check_parameters(rules_for(family, spec.provider_model), spec.provider_model,
                                parameters, number_of_outputs=number_of_outputs,
                                outputs_given=outputs_given, input_images=input_images)

    def _metrics(self, given: Any, read: _Reader) -> list[Metric]:
        if given is None:
            return [Metric(MetricName.SUCCESS_RATE, Role.PRIMARY, Goal.MAXIMIZE)]
        if type(given) is not list or not given:
            read.problems.append("metrics: must be a non-empty list")
            return []
        metrics = []
        for index, item in enumerate(given):
            path = f"metrics[{index}]"
            if not isinstance(item, dict):
                read.problems.append(f"{path}: must be an object")
                continue
            name = read.choice(item, "name", f"{path}.name", MetricName, None)
            if name is None:
                if "name" not in item:
                    read.problems.append(f"{path}.name: required")
                continue
            metrics.append(Metric(name, read.choice(item, "type", f"{path}.type", Role,
                                                    Role.PRIMARY),
                                  read.choice(item, "goal", f"{path}.goal", Goal,
                                              analysis.DEFAULT_GOALS[name])))
        if len({metric.name for metric in metrics}) != len(metrics):
            read.problems.append("metrics: each metric at most once")
        if metrics and not any(metric.role is Role.PRIMARY for metric in metrics):
            read.problems.append("metrics: at least one must be primary")
        return metrics

    @staticmethod
    def _range(given: Any, problems: list[str]) -> tuple[float, float]:
        if given is None:
            return (0.0, 1.0)
        numbers = [_number(v) for v in given] if type(given) is list and len(given) == 2 else []
        if len(numbers) != 2 or None in numbers:
            problems.append("namespaceRange: must be [start, end] with 0 <= start < end <= 1")
            return (0.0, 1.0)
        start, end = numbers
        assert start is not None and end is not None
        if not 0 <= start < end <= 1:
            problems.append("namespaceRange: must be [start, end] with 0 <= start < end <= 1")
        return (start, end)

    def _bandit(self, given: Any, read: _Reader) -> BanditSettings:
        if given is None:
            return BanditSettings()
        if not isinstance(given, dict):
            read.problems.append("bandit: must be an object")
            return BanditSettings()
        default = BanditSettings()
        metric = read.choice(given, "metric", "bandit.metric", MetricName, default.metric)
        if metric not in (MetricName.SUCCESS_RATE, MetricName.RATING, MetricName.COST):
            read.problems.append("bandit.metric: must be success_rate, rating or cost")
        floor = read.number(given, "floor", "bandit.floor", 0, 0.5)
        min_samples = given.get("minSamples", default.min_samples)
        if type(min_samples) is not int or min_samples < 1:
            read.problems.append("bandit.minSamples: must be a whole number of at least 1")
            min_samples = default.min_samples
        cadence = read.number(given, "cadence", "bandit.cadence", 1, 30 * 86_400)
        pause_below = read.number(given, "pauseBelow", "bandit.pauseBelow", 0, 1)
        pause_after = read.number(given, "pauseAfter", "bandit.pauseAfter", 1, 1000)
        win_at = read.number(given, "winAt", "bandit.winAt", 0.5, 1)
        read.problems += [f"bandit.{key}: unknown field" for key in given
                          if key not in {"metric", "floor", "minSamples", "cadence",
                                         "pauseBelow", "pauseAfter", "winAt"}]
        return BanditSettings(
            metric=metric, floor=default.floor if floor is None else floor,
            min_samples=min_samples, cadence=default.cadence if cadence is None else cadence,
            pause_below=pause_below,
            pause_after=default.pause_after if pause_after is None else int(pause_after),
            win_at=default.win_at if win_at is None else win_at)

    # -- reading --------------------------------------------------------------

    async def list(self) -> list[Experiment]:
        """Every experiment, oldest first."""
        return await self.store.list_experiments()

    async def get(self, experiment_id: str) -> Experiment:
        """The experiment, or NOT_FOUND."""
        experiment = await self.store.get_experiment(experiment_id)
        if experiment is None:
            raise EaselError(ErrorCode.NOT_FOUND, f"no experiment {experiment_id}")
        return experiment

    async def spend(self, experiment_id: str) -> float:
        """What the experiment's enrolled jobs cost so far (their ``cost``)."""
        await self.get(experiment_id)
        return await self.store.experiment_spend(experiment_id)

    async def results(self, experiment_id: str) -> Results:
        """The statistics, computed now from the stored job rows."""
        experiment = await self.get(experiment_id)
        observations = await self.store.observations(experiment_id,
                                                     experiment.segment_attribute)
        results = analysis.analyze(experiment, observations, weights=weights_of(experiment),
                                   p_best=self.p_best.get(experiment_id))
        if any(variant.factors for variant in experiment.variants):
            results.main_effects = factorial.main_effects(
                experiment.variants, results.arms,
                [metric.name for metric in experiment.primary_metrics()])
        return results

    async def recent_outputs(self, experiment_id: str,
                             per_variant: int = 6) -> dict[str, list[Job]]:
        """Each variant's newest succeeded jobs (newest first), so a person can look
        at what each variant makes."""
        experiment = await self.get(experiment_id)
        return {variant.id: await self.store.experiment_jobs(experiment_id, variant.id,
                                                             per_variant)
                for variant in experiment.variants}

    # -- changing -------------------------------------------------------------

    async def start(self, experiment_id: str) -> Experiment:
        """Start (or resume) it: CONFLICT unless DRAFT or PAUSED, or when a running
        experiment of its namespace owns an overlapping range."""
        experiment = await self.get(experiment_id)
        if experiment.namespace is not None:
            start, end = experiment.namespace_range
            for other in await self.store.list_experiments():
                if (other.id != experiment.id and other.namespace == experiment.namespace
                        and other.state in (ExperimentState.RUNNING, ExperimentState.PAUSED)
                        and other.namespace_range[0] < end and start < other.namespace_range[1]):
                    raise EaselError(
                        ErrorCode.CONFLICT,
                        f"experiment {other.id} owns an overlapping range of namespace"
                        f" {experiment.namespace!r}",
                        {"experiment": other.id, "range": list(other.namespace_range)})
        return await self._move(experiment, "start")

    async def pause(self, experiment_id: str) -> Experiment:
        """Stop enrolling (CONFLICT unless RUNNING); its jobs keep running."""
        return await self._move(await self.get(experiment_id), "pause")

    async def complete(self, experiment_id: str) -> Experiment:
        """End it for good (CONFLICT when it already is)."""
        return await self._move(await self.get(experiment_id), "complete")

    async def _move(self, experiment: Experiment, action: str) -> Experiment:
        allowed, to = _MOVES[action]
        if experiment.state not in allowed:
            raise EaselError(
                ErrorCode.CONFLICT,
                f"cannot {action} experiment {experiment.id}: it is {experiment.state.value}",
                {"state": experiment.state.value})
        now = wall_now()
        experiment.state = to
        experiment.updated_at = now
        if to is ExperimentState.RUNNING and experiment.started_at is None:
            experiment.started_at = now
        if to is ExperimentState.COMPLETED:
            experiment.completed_at = now
        return await self._save(experiment)

    async def set_weights(self, experiment_id: str, weights: Any) -> Experiment:
        """New traffic weights (variant id -> weight, each >= 0, not all 0), which
        start a new phase: units not yet assigned are bucketed afresh, those
        assigned keep their variant. CONFLICT once COMPLETED."""
        experiment = await self.get(experiment_id)
        if experiment.state is ExperimentState.COMPLETED:
            raise EaselError(ErrorCode.CONFLICT, f"experiment {experiment_id} is COMPLETED",
                             {"state": experiment.state.value})
        ids = [variant.id for variant in experiment.variants]
        problems = []
        if not isinstance(weights, dict) or set(weights) != set(ids):
            problems.append(f"weights: must give a weight for each of {', '.join(ids)}")
        else:
            problems += [f"weights.{key}: must be a number of at least 0"
                         for key, value in weights.items()
                         if (number := _number(value)) is None or number < 0]
            if not problems and sum(weights.values()) <= 0:
                problems.append("weights: must not all be 0")
        if problems:
            raise invalid_parameters(problems)
        assert isinstance(weights, dict)
        experiment.variants = [
            attrs.evolve(variant, weight=float(weights[variant.id]))
            for variant in experiment.variants]
        experiment.phase += 1
        experiment.updated_at = wall_now()
        return await self._save(experiment)

    async def reweighed(self, experiment_id: str, decision: BanditDecision) -> Experiment:
        """Apply a bandit's ``decision`` (new shares and paused arms; a new phase when
        the shares move) to the experiment as stored now, if it is still RUNNING."""
        experiment = await self.get(experiment_id)
        if experiment.state is not ExperimentState.RUNNING:
            return experiment
        updated = apply_decision(experiment, decision)
        if updated.phase == experiment.phase:
            return experiment
        updated.updated_at = wall_now()
        return await self._save(updated)

    async def _save(self, experiment: Experiment) -> Experiment:
        await self.store.save_experiment(experiment)
        await self.refresh()
        return experiment

    # -- ratings --------------------------------------------------------------

    async def rate(self, job_id: str, owner: str | None, rating: Any,
                   feedback: Any = None) -> Job:
        """Record the client's rating (1-5) and optional feedback of its finished
        job; a second rating replaces the first (feedback included). Only the key
        that made the job may rate it: ``owner`` is the caller's key id (None
        without keys, matching the jobs made without one), and any other job, an
        admin key's view included, is NOT_FOUND, as a missing one. Only a
        SUCCEEDED job can be rated (CONFLICT otherwise)."""
        problems = []
        if type(rating) is not int or not 1 <= rating <= 5:
            problems.append("rating: must be a whole number from 1 to 5")
        if feedback is not None and (type(feedback) is not str or len(feedback) > MAX_FEEDBACK):
            problems.append(f"feedback: must be a string of at most {MAX_FEEDBACK} characters")
        if problems:
            raise invalid_parameters(problems)
        job = await self.store.get_job(job_id)
        if job is None or job.owner != owner:
            raise EaselError(ErrorCode.NOT_FOUND, f"no job {job_id}")
        if job.state is not JobState.SUCCEEDED:
            raise EaselError(ErrorCode.CONFLICT,
                             f"job {job_id} is {job.state.status}: only a finished job is rated",
                             {"status": job.state.status})
        rated = await self.store.update(job_id, JobState.SUCCEEDED, rating=rating,
                                        feedback=feedback)
        assert rated is not None  # a SUCCEEDED job stays SUCCEEDED
        return rated

    # -- the API's shape ------------------------------------------------------

    @staticmethod
    def to_api(experiment: Experiment) -> dict[str, Any]:
        """The experiment as the admin API shows it (the request's spelling)."""
        e = experiment
        shares = weights_of(e)
        return {
            "id": e.id, "name": e.name, "description": e.description, "state": e.state.value,
            "match": e.match_model, "trafficAllocation": round(e.coverage * 100, 6),
            "variants": [{"id": v.id, "name": v.name, "modelIdentifier": v.model,
                          "promptTemplate": v.prompt_template, "parameters": v.parameters,
                          "weight": v.weight, "share": shares[v.id], "factors": v.factors,
                          "paused": v.paused} for v in e.variants],
            "metrics": [{"name": m.name.value, "type": m.role.value, "goal": m.goal.value}
                        for m in e.metrics],
            "namespace": e.namespace, "namespaceRange": list(e.namespace_range),
            "phase": e.phase, "allocation": e.allocation.value,
            "bandit": None if e.allocation is Allocation.FIXED else {
                "metric": e.bandit.metric.value, "floor": e.bandit.floor,
                "minSamples": e.bandit.min_samples, "cadence": e.bandit.cadence,
                "pauseBelow": e.bandit.pause_below, "pauseAfter": e.bandit.pause_after,
                "winAt": e.bandit.win_at},
            "budget": e.budget, "segmentAttribute": e.segment_attribute,
            "minSample": e.min_sample, "sequential": e.sequential, "seed": e.seed or e.id,
            "createdAt": iso(e.created_at), "updatedAt": iso(e.updated_at),
            "startedAt": iso(e.started_at), "completedAt": iso(e.completed_at),
        }


#: The longest feedback text kept with a rating, in characters.
MAX_FEEDBACK = 4000


def weights_of(experiment: Experiment) -> dict[str, float]:
    """The current traffic share of each variant (paused arms get none)."""
    shares = traffic_shares(experiment)
    return {v.id: shares.get(v.id, 0.0) for v in experiment.variants}

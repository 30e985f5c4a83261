"""Enrolment: a submission that matches a running experiment becomes one of its
variants, before its row is inserted.

A submission matches an experiment that is RUNNING and either names it in its
``experiment`` field or asks for the experiment's ``match`` model; the first
such experiment (oldest first) that takes the unit enrols it. The unit is the
request's ``user_id``, else its API key, else the job itself
(``hashing.unit_for``). A unit that has a stored assignment keeps it, whatever
the weights, phase or bandit say now (sticky across restarts too: it is in the
store); otherwise GrowthBook's hash picks the variant (``hashing.assign``), or
none when the unit is outside coverage or outside the experiment's range of its
namespace, and the job stays on the model it asked for.

The enrolled job is rewritten to its variant: model, provider and
provider-side model from the catalog, the prompt through the variant's template
(``{prompt}`` is the client's prompt; a template without it replaces the prompt),
the variant's parameters merged over the client's and checked again against the
variant's model. A merge that model refuses leaves the job on the requested
model, not enrolled (logged): the client asked for something valid.

The experiments are read from the service's memory (``ExperimentService.running``),
so a submission that matches none costs nothing but a loop over them.
"""

from __future__ import annotations

import logging

import attrs

from actors.clock import wall_now
from actors.errors import EaselError, ErrorCode
from actors.experiments.hashing import assign, unit_for
from actors.experiments.model import Assignment, Experiment, Variant
from actors.experiments.service import PROMPT_SLOT, ExperimentService
from actors.jobs import Job
from actors.validation import MAX_PROMPT

log = logging.getLogger(__name__)


def candidates(experiments: list[Experiment], job: Job) -> list[Experiment]:
    """The running experiments ``job`` may be enrolled in, in order."""
    if job.experiment_id is not None:
        return [e for e in experiments if e.id == job.experiment_id]
    return [e for e in experiments if e.match_model == job.model]


def rewrite(service: ExperimentService, job: Job, experiment: Experiment,
            variant: Variant) -> Job | None:
    """``job`` as ``variant`` runs it, or None when the variant's model refuses the
    merged request."""
    prompt = job.prompt
    if variant.prompt_template is not None:
        template = variant.prompt_template
        prompt = template.replace(PROMPT_SLOT, job.prompt) if PROMPT_SLOT in template \
            else template
    if len(prompt) > MAX_PROMPT:
        return None
    checked = service.checked(variant.model, {**job.parameters, **variant.parameters},
                              number_of_outputs=job.number_of_outputs, outputs_given=True,
                              input_images=job.input_images)
    if checked.problems:
        log.info("experiment variant refuses the request; not enrolled",
                 extra={"experiment": experiment.id, "variant": variant.id,
                        "problems": checked.problems[:5]})
        return None
    spec = service.catalog[variant.model]
    return attrs.evolve(
        job, model=variant.model, provider=spec.provider, provider_model=spec.provider_model,
        prompt=prompt, parameters=checked.parameters,
        number_of_outputs=checked.number_of_outputs,
        experiment_id=experiment.id, variant_id=variant.id)


async def enroll(service: ExperimentService, job: Job) -> Job:
    """``job`` rewritten to its variant when an experiment takes it, else as it came
    (without an ``experiment_id``). INVALID_REQUEST when it names an experiment that
    does not exist."""
    named = job.experiment_id
    if named is not None and not any(e.id == named for e in service.running()) \
            and await service.store.get_experiment(named) is None:
        raise unknown_experiment(named)
    found = candidates(service.running(), job)
    if not found:
        return attrs.evolve(job, experiment_id=None, variant_id=None)
    unit = unit_for(job.user_id, job.owner, job.id)
    for experiment in found:
        variants = {variant.id: variant for variant in experiment.variants}
        # A job's own id never comes back: no stored one to look for (it is still
        # stored, as the record of the phase its unit was bucketed in).
        once = unit.startswith("job:")
        stored = None if once else await service.store.assignment_of(experiment.id, unit)
        if stored is None:
            chosen = assign(experiment, unit)
            if chosen is None:
                continue
            # A concurrent first submission of the unit may have won: its one counts.
            stored = await service.store.assign(
                Assignment(experiment.id, unit, chosen.id, experiment.phase, wall_now()))
        variant = variants.get(stored.variant_id)
        if variant is None:
            continue
        enrolled = rewrite(service, job, experiment, variant)
        if enrolled is not None:
            return enrolled
    return attrs.evolve(job, experiment_id=None, variant_id=None)


def unknown_experiment(experiment_id: str) -> EaselError:
    """The refusal of a submission naming an experiment that does not exist."""
    return EaselError(ErrorCode.INVALID_REQUEST, f"no experiment {experiment_id[:100]!r}",
                      {"param": "experiment"})

"""The admin experiments API (admin scope): create, list, read, start, pause,
complete, re-weigh an experiment, and read its results.

- ``POST /api/admin/experiments``: a new experiment (DRAFT), checked whole; the
  body's shape is in ``actors/experiments/service.py``. 201 with the experiment;
  422 INVALID_PARAMETERS listing every problem (each naming its variant).
- ``GET /api/admin/experiments``: ``{"experiments": [...]}``, oldest first.
- ``GET /api/admin/experiments/{id}``: one experiment, with its ``spend``.
- ``POST /api/admin/experiments/{id}/start|pause|complete``: its life
  (DRAFT -> RUNNING <-> PAUSED -> COMPLETED); 409 CONFLICT from a wrong state.
- ``POST /api/admin/experiments/{id}/weights`` ``{"weights": {"A": 1, "B": 3}}``:
  new traffic weights, which start a new phase (units already assigned keep
  their variant; new ones are bucketed afresh).
- ``GET /api/admin/experiments/{id}/results``: the statistics computed now from
  the stored job rows, with the experiment's ``spend``.
"""

from __future__ import annotations

from quart import Blueprint, Response

from actors.experiments.analysis import results_to_api
from daemon.api.auth import caller
from daemon.api.errors import json_body, json_response
from daemon.api.services import services

blueprint = Blueprint("experiments", __name__, url_prefix="/api/admin/experiments")


async def _shown(experiment_id: str) -> Response:
    runtime = services().runtime
    experiments = runtime.experiments
    experiment = await experiments.get(experiment_id)
    return json_response({**experiments.to_api(experiment),
                          "spend": await experiments.spend(experiment_id)})


@blueprint.post("")
async def create() -> Response:
    experiments = services().runtime.experiments
    experiment = await experiments.create(await json_body(), caller().owner)
    return json_response(experiments.to_api(experiment), 201)


@blueprint.get("")
async def list_experiments() -> Response:
    experiments = services().runtime.experiments
    return json_response({"experiments": [experiments.to_api(e)
                                          for e in await experiments.list()]})


@blueprint.get("/<experiment_id>")
async def read(experiment_id: str) -> Response:
    return await _shown(experiment_id)


@blueprint.post("/<experiment_id>/start")
async def start(experiment_id: str) -> Response:
    await services().runtime.experiments.start(experiment_id)
    return await _shown(experiment_id)


@blueprint.post("/<experiment_id>/pause")
async def pause(experiment_id: str) -> Response:
    await services().runtime.experiments.pause(experiment_id)
    return await _shown(experiment_id)


@blueprint.post("/<experiment_id>/complete")
async def complete(experiment_id: str) -> Response:
    await services().runtime.experiments.complete(experiment_id)
    return await _shown(experiment_id)


@blueprint.post("/<experiment_id>/weights")
async def weights(experiment_id: str) -> Response:
    body = await json_body()
    given = body.get("weights") if isinstance(body, dict) else None
    await services().runtime.experiments.set_weights(experiment_id, given)
    return await _shown(experiment_id)


@blueprint.get("/<experiment_id>/results")
async def results(experiment_id: str) -> Response:
    experiments = services().runtime.experiments
    found = await experiments.results(experiment_id)
    return json_response({**results_to_api(found),
                          "spend": await experiments.spend(experiment_id)})

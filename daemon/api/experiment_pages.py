"""The experiment pages: server-rendered HTML under ``/admin/experiments``.

- ``/admin/experiments``: every experiment with its state, variants, traffic and
  spend, and the form that creates one (name, description, the catalog model whose
  submissions it enrolls, one row per variant: model, prompt template, parameters
  as JSON, weight; the metrics with their role and goal; coverage; fixed or bandit
  allocation). A refused form comes back as it was typed, with each problem next
  to it (a variant's under its row);
- ``/admin/experiments/<id>``: *Start*, *Pause*, *Complete* (POST forms), and the
  results: the sample-ratio check, the winner box with its confidence and the
  recommendation sentence, each variant's metrics with their intervals and its
  comparison with the control, an SVG chart per metric (``daemon/api/charts.py``),
  the bandit's chance-to-be-best and traffic shares, the segments with their
  caveat, and the latest outputs of each variant as thumbnails.
- ``/admin/experiments/<id>/stats``: the results section alone. While the
  experiment runs, a few lines of script in the page (served with it, nothing
  fetched from elsewhere) swap it in every few seconds; without scripts the page
  is complete and a reload shows the same.
- ``/admin/experiments/media/<name>``: a stored output, for the thumbnails: the
  admin cookie is sent on ``/admin`` paths only, so the page cannot use
  ``/media/...`` itself once keys are in force.

These are admin pages: their blueprint is nested in the admin pages' one
(``daemon/api/admin.py``), so the endpoints are ``admin.experiment_pages.*``: the same
login (``KeyCookie``, the admin scope, the login form for anyone else), the same
family in ``NEEDS``, and like every admin page they are left out of the OpenAPI
document. Changes are POST only, under the admin cookie's ``SameSite=Strict``.
The data comes from ``runtime.experiments``; the pages never read the store.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from quart import Blueprint, Response, redirect, render_template, request
from werkzeug.datastructures import MultiDict

from actors.errors import EaselError, ErrorCode, http_status
from actors.experiments.analysis import DEFAULT_GOALS
from actors.experiments.model import (
    Allocation,
    Experiment,
    ExperimentState,
    Goal,
    MetricName,
    Results,
    Role,
)
from actors.experiments.service import PROMPT_SLOT
from actors.jobs import Job
from actors.storage.local import MEDIA_PREFIX
from daemon.api import media
from daemon.api.admin import Page, admin_page
from daemon.api.auth import caller
from daemon.api.charts import Bar, comparison_chart
from daemon.api.services import services

blueprint = Blueprint("experiment_pages", __name__, url_prefix="/experiments")

#: Variant rows the create form offers at first (a button adds more).
FORM_ROWS = 3
#: The most variant rows a form may have.
MAX_ROWS = 16
#: Seconds between refreshes of a running experiment's results.
REFRESH_SECONDS = 5
#: Outputs shown per variant.
RECENT = 6

#: What each metric is called on the pages.
LABELS: dict[MetricName, str] = {
    MetricName.SUCCESS_RATE: "Success rate",
    MetricName.QUEUE_WAIT: "Queue wait",
    MetricName.RUN_TIME: "Run time",
    MetricName.COST: "Cost per job",
    MetricName.RATING: "Rating (1-5)",
    MetricName.RATING_RATE: "Share rated",
}


def metric_format(metric: MetricName) -> Callable[[float], str]:
    """How a value of ``metric`` is written: a share as a percentage, a time in
    seconds, a cost in the catalog's own units, a rating on its 1-5 scale."""
    if metric in (MetricName.SUCCESS_RATE, MetricName.RATING_RATE):
        return lambda value: f"{value * 100:.1f} %"
    if metric in (MetricName.QUEUE_WAIT, MetricName.RUN_TIME):
        return lambda value: f"{value:.3g} s" if abs(value) < 100 else f"{value:.0f} s"
    if metric is MetricName.RATING:
        return lambda value: f"{value:.2f}"
    return lambda value: f"{value:.4g}"


def _share(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f} %"


def _chance(value: float | None) -> str:
    """A confidence or a chance to be best: never a rounded "100.0 %"."""
    if value is None:
        return ""
    if value > 0.999:
        return "> 99.9 %"
    return "< 0.1 %" if 0 < value < 0.001 else _share(value)


def _p(value: float | None) -> str:
    if value is None:
        return ""
    return "< 0.0001" if value < 0.0001 else f"{value:.4f}"


# -- the create form ----------------------------------------------------------


@attrs.frozen
class Form:
    """The create form as typed: shown again as it was when it is refused."""

    values: dict[str, str]
    rows: list[dict[str, str]]
    metrics: dict[str, dict[str, str]]
    #: Problems not tied to one variant, and each variant row's own.
    problems: list[str] = attrs.field(factory=list)
    row_problems: dict[int, list[str]] = attrs.field(factory=dict)

    @classmethod
    def blank(cls, models: list[str]) -> Form:
        first = models[0] if models else ""
        rows = [{"id": chr(ord("a") + i), "model": first, "template": "", "parameters": "",
                 "weight": "1"} for i in range(2)]
        rows += [{"id": "", "model": "", "template": "", "parameters": "", "weight": "1"}
                 for _ in range(FORM_ROWS - 2)]
        metrics = {m.value: {"role": "primary" if m is MetricName.SUCCESS_RATE else "",
                             "goal": DEFAULT_GOALS[m].value} for m in MetricName}
        return cls({"coverage": "100", "allocation": Allocation.FIXED.value,
                    "match_model": first, "min_sample": "100"}, rows, metrics)

    @classmethod
    def typed(cls, form: MultiDict[str, str]) -> Form:
        count = _int(form.get("rows"), FORM_ROWS)
        count = max(1, min(MAX_ROWS, count + (1 if form.get("action") == "add-row" else 0)))
        rows = [{key: form.get(f"variant-{i}-{key}", "").strip()
                 for key in ("id", "model", "template", "parameters", "weight")}
                for i in range(count)]
        metrics = {m.value: {"role": form.get(f"metric-{m.value}", ""),
                             "goal": form.get(f"goal-{m.value}", DEFAULT_GOALS[m].value)}
                   for m in MetricName}
        keys = ("name", "description", "match_model", "coverage", "allocation", "budget",
                "segment_attribute", "min_sample")
        return cls({key: form.get(key, "").strip() for key in keys}, rows, metrics)

    def body(self) -> dict[str, Any]:
        """The admin API's create body for this form; problems the form alone can
        see (a number that is not one, parameters that are not a JSON object) are
        added to ``problems`` and ``row_problems``."""
        variants = []
        for i, row in enumerate(self.rows):
            if not (row["model"] or row["id"] or row["template"] or row["parameters"]):
                continue
            variant: dict[str, Any] = {"modelIdentifier": row["model"]}
            if row["id"]:
                variant["id"] = row["id"]
            if PROMPT_SLOT in row["template"]:
                variant["promptTemplate"] = row["template"]
            elif row["template"]:  # no slot for the client's prompt: it replaces it
                variant["prompt"] = row["template"]
            if row["parameters"]:
                try:
                    parameters = json.loads(row["parameters"])
                except ValueError as exc:
                    parameters = None
                    self.row_problems.setdefault(i, []).append(f"parameters: not JSON ({exc})")
                if parameters is not None and not isinstance(parameters, dict):
                    self.row_problems.setdefault(i, []).append(
                        "parameters: must be a JSON object")
                elif parameters is not None:
                    variant["parameters"] = parameters
            if row["weight"]:
                weight = self._number(row["weight"], "weight", i)
                if weight is not None:
                    variant["weight"] = weight
            variants.append(variant)
        metrics = [{"name": name, "type": chosen["role"], "goal": chosen["goal"]}
                   for name, chosen in self.metrics.items()
                   if chosen["role"] in {role.value for role in Role}]
        body: dict[str, Any] = {"name": self.values["name"],
                                "description": self.values["description"],
                                "variants": variants, "metrics": metrics,
                                "allocation": self.values["allocation"] or Allocation.FIXED.value}
        if self.values["match_model"]:
            body["match"] = self.values["match_model"]
        coverage = self._number(self.values["coverage"] or "100", "coverage")
        if coverage is not None:
            body["trafficAllocation"] = coverage
        if self.values["budget"]:
            body["budget"] = self._number(self.values["budget"], "budget")
        if self.values["segment_attribute"]:
            body["segmentAttribute"] = self.values["segment_attribute"]
        if self.values["min_sample"]:
            least = self._number(self.values["min_sample"], "minimum sample")
            body["minSample"] = int(least) if least is not None and least.is_integer() else least
        return body

    def _number(self, text: str, what: str, row: int | None = None) -> float | None:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
        problem = f"{what}: {text!r} is not a number"
        if row is None:
            self.problems.append(problem)
        else:
            self.row_problems.setdefault(row, []).append(problem)
        return None

    def refused(self, error: EaselError) -> None:
        """Place the service's problems: a variant's under its row (by its index
        in the body, ``variants[1]`` or ``variants.1``), the rest above the form."""
        found = error.info.details.get("problems")
        problems = [str(p) for p in found] if isinstance(found, list) and found else [
            error.info.message]
        used = [i for i, row in enumerate(self.rows)
                if row["model"] or row["id"] or row["template"] or row["parameters"]]
        for problem in problems:
            match = _VARIANT.match(problem)
            index = int(match.group(1) or match.group(2)) if match else len(used)
            if index < len(used):
                self.row_problems.setdefault(used[index], []).append(problem)
            else:
                self.problems.append(problem)


_VARIANT = re.compile(r"^variants(?:\[(\d+)\]|\.(\d+))")


def _int(text: str | None, default: int) -> int:
    try:
        return int(text or "")
    except ValueError:
        return default


# -- pages --------------------------------------------------------------------


def _models() -> list[str]:
    return sorted(services().runtime.catalog)


async def _list_page(form: Form, status: int = 200, missing: str = "") -> tuple[str, int]:
    service = services().runtime.experiments
    rows = []
    for experiment in await service.list():
        results = await _results(experiment)
        rows.append({"experiment": experiment, "traffic": _traffic(results),
                     "spend": await service.spend(experiment.id)})
    page = await render_template("admin/experiments.html", rows=rows, form=form,
                                 models=_models(), metrics=list(MetricName), labels=LABELS,
                                 roles=[role.value for role in Role],
                                 goals=[goal.value for goal in Goal],
                                 allocations=[a.value for a in Allocation], missing=missing)
    return page, status


async def _results(experiment: Experiment) -> Results | None:
    """The results, or None before the experiment has had any traffic."""
    if experiment.state is ExperimentState.DRAFT:
        return None
    return await services().runtime.experiments.results(experiment.id)


def _traffic(results: Results | None) -> dict[str, int]:
    """Finished jobs per variant (what the success rate counts)."""
    if results is None:
        return {}
    return {variant: arm[MetricName.SUCCESS_RATE].n for variant, arm in results.arms.items()
            if MetricName.SUCCESS_RATE in arm}


@blueprint.get("")
@blueprint.get("/")
@admin_page
async def index() -> Page:
    return await _list_page(Form.blank(_models()))


@blueprint.post("")
@blueprint.post("/")
@admin_page
async def create() -> Page:
    form = Form.typed(await request.form)
    if (await request.form).get("action") == "add-row":
        return await _list_page(form)
    body = form.body()
    if form.problems or form.row_problems:
        return await _list_page(form, 400)
    try:
        experiment = await services().runtime.experiments.create(body, caller().owner)
    except EaselError as exc:
        form.refused(exc)
        return await _list_page(form, http_status(exc.code))
    return redirect(f"/admin/experiments/{experiment.id}", 303)


async def _detail(experiment_id: str) -> dict[str, Any]:
    """What the detail page and its results section show."""
    service = services().runtime.experiments
    experiment = await service.get(experiment_id)
    results = await _results(experiment)
    return {"experiment": experiment, "results": results,
            **(_shown_results(experiment, results) if results else {}),
            "refresh": REFRESH_SECONDS if experiment.state is ExperimentState.RUNNING else 0}


def _shown_results(experiment: Experiment, results: Results) -> dict[str, Any]:
    names = {v.id: v.name or v.id for v in experiment.variants}
    metrics = [metric.name for metric in experiment.metrics]
    for metric in (MetricName.SUCCESS_RATE, MetricName.COST):
        if metric not in metrics and any(metric in arm for arm in results.arms.values()):
            metrics.append(metric)
    charts = []
    for metric in metrics:
        fmt = metric_format(metric)
        bars = []
        for variant in experiment.variants:
            arm = results.arms.get(variant.id, {}).get(metric)
            interval = arm.interval if arm else None
            bars.append(Bar(names[variant.id], arm.mean if arm else None,
                            (interval.low, interval.high) if interval else None,
                            control=variant.id == experiment.control.id))
        charts.append({"metric": metric, "svg": comparison_chart(
            bars, title=f"{LABELS[metric]} by variant, with intervals",
            chart_id=f"chart-{metric.value}", fmt=fmt)})
    bandit = None
    if experiment.allocation is Allocation.BANDIT or results.p_best is not None:
        # Before its first re-weighting a bandit has no chance to be best yet.
        bandit = [{"variant": names[v], "p_best": (results.p_best or {}).get(v),
                   "weight": (results.weights or {}).get(v)} for v in names]
    return {"names": names, "metrics": metrics, "charts": charts, "bandit": bandit}


@blueprint.get("/<experiment_id>")
@admin_page
async def detail(experiment_id: str) -> Page:
    try:
        shown = await _detail(experiment_id)
    except EaselError as exc:
        if exc.code is not ErrorCode.NOT_FOUND:
            raise
        return await _list_page(Form.blank(_models()), 404, missing=experiment_id)
    recent = await services().runtime.experiments.recent_outputs(experiment_id,
                                                                 per_variant=RECENT)
    thumbnails = {variant: [await _thumbnail(job) for job in jobs]
                  for variant, jobs in recent.items()}
    return await render_template("admin/experiment.html", **shown, thumbnails=thumbnails,
                                 **_helpers())


@blueprint.get("/<experiment_id>/stats")
@admin_page
async def stats(experiment_id: str) -> Page:
    return await render_template("admin/experiment_stats.html", **await _detail(experiment_id),
                                 **_helpers())


def _helpers() -> dict[str, Any]:
    return {"fmt": lambda metric, value: "" if value is None else metric_format(metric)(value),
            "share": _share, "chance": _chance, "p": _p, "labels": LABELS}


@blueprint.post("/<experiment_id>/<any(start, pause, complete):action>")
@admin_page
async def change(experiment_id: str, action: str) -> Page:
    """*Start*, *Pause* or *Complete*; back to the page, or the page with the reason
    the change was refused (starting a completed experiment...)."""
    service = services().runtime.experiments
    try:
        await getattr(service, action)(experiment_id)
    except EaselError as exc:
        if exc.code is ErrorCode.NOT_FOUND:
            raise
        shown = await _detail(experiment_id)
        page = await render_template("admin/experiment.html", **shown, thumbnails={},
                                     problem=exc.info.message, **_helpers())
        return page, http_status(exc.code)
    return redirect(f"/admin/experiments/{experiment_id}", 303)


@blueprint.get("/media/<path:name>")
@admin_page
async def output(name: str) -> Response:
    return await media.media(name)


async def _thumbnail(job: Job) -> dict[str, Any]:
    """A job's first output, as the page links to it."""
    shown = await services().runtime.present(job)
    result: Mapping[str, Any] = next(iter(shown.get("results") or []), {})
    url = result.get("url") if isinstance(result, Mapping) else None
    own = services().runtime.links.base_url + MEDIA_PREFIX
    if isinstance(url, str) and url.startswith(own):
        url = "/admin/experiments/media/" + url.removeprefix(own)
    kind = str(result.get("type") or result.get("contentType") or "")
    return {"job": job, "url": url if isinstance(url, str) else None,
            "video": "video" in kind, "prompt": job.prompt}

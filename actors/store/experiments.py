"""SQLite repository of experiments (``experiments``, ``experiment_variants``,
``experiment_metrics``), their stored assignments (``experiment_assignments``), and
what the statistics read from the enrolled jobs' rows.

Functions of a ``sqlite3.Connection``, run on the store's worker threads. The
observations of an experiment are read column by column in one query, never as
``Job`` objects: an experiment of 100,000 jobs is 100,000 small tuples.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from actors.experiments.model import (
    Allocation,
    Assignment,
    BanditSettings,
    Experiment,
    ExperimentState,
    Goal,
    Metric,
    MetricName,
    Observation,
    Role,
    Variant,
)
from actors.jobs import Job
from actors.store import jobs

#: The unit a job was assigned by, in SQL: the same rule as
#: ``actors.experiments.hashing.unit_for`` (user id, else the API key, else the job).
UNIT_SQL = "COALESCE(NULLIF(user_id, ''), 'key:' || owner, 'job:' || id)"

_EXPERIMENT_COLUMNS = (
    "id", "name", "description", "state", "match_model", "coverage", "seed", "namespace",
    "namespace_start", "namespace_end", "phase", "allocation", "bandit", "budget",
    "segment_attribute", "min_sample", "sequential", "owner", "created_at", "updated_at",
    "started_at", "completed_at",
)
_SAVE_EXPERIMENT = (
    f"INSERT OR REPLACE INTO experiments ({', '.join(_EXPERIMENT_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _EXPERIMENT_COLUMNS)})"
)


def bandit_json(settings: BanditSettings) -> str:
    return json.dumps({
        "metric": settings.metric.value, "floor": settings.floor,
        "min_samples": settings.min_samples, "cadence": settings.cadence,
        "pause_below": settings.pause_below, "pause_after": settings.pause_after,
        "win_at": settings.win_at,
    })


def _bandit(text: str) -> BanditSettings:
    data: dict[str, Any] = json.loads(text) if text else {}
    if "metric" in data:
        data["metric"] = MetricName(data["metric"])
    return BanditSettings(**data)


def save(conn: sqlite3.Connection, experiment: Experiment) -> None:
    """Insert or replace ``experiment`` whole: its row, variants and metrics."""
    e = experiment
    conn.execute(_SAVE_EXPERIMENT, (
        e.id, e.name, e.description, e.state.value, e.match_model, e.coverage, e.seed,
        e.namespace, e.namespace_range[0], e.namespace_range[1], e.phase,
        e.allocation.value, bandit_json(e.bandit), e.budget, e.segment_attribute,
        e.min_sample, int(e.sequential), e.owner, e.created_at, e.updated_at,
        e.started_at, e.completed_at,
    ))
    conn.execute("DELETE FROM experiment_variants WHERE experiment_id=?", (e.id,))
    conn.execute("DELETE FROM experiment_metrics WHERE experiment_id=?", (e.id,))
    conn.executemany(
        "INSERT INTO experiment_variants (experiment_id, id, position, name, model,"
        " prompt_template, parameters, weight, factors, paused)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(e.id, v.id, i, v.name, v.model, v.prompt_template, json.dumps(v.parameters),
          v.weight, json.dumps(v.factors), int(v.paused)) for i, v in enumerate(e.variants)],
    )
    conn.executemany(
        "INSERT INTO experiment_metrics (experiment_id, name, position, role, goal)"
        " VALUES (?, ?, ?, ?, ?)",
        [(e.id, m.name.value, i, m.role.value, m.goal.value) for i, m in enumerate(e.metrics)],
    )


def _from_rows(row: sqlite3.Row, variants: list[sqlite3.Row],
               metrics: list[sqlite3.Row]) -> Experiment:
    return Experiment(
        id=row["id"], name=row["name"], description=row["description"],
        state=ExperimentState(row["state"]), match_model=row["match_model"],
        coverage=row["coverage"], seed=row["seed"], namespace=row["namespace"],
        namespace_range=(row["namespace_start"], row["namespace_end"]), phase=row["phase"],
        allocation=Allocation(row["allocation"]), bandit=_bandit(row["bandit"]),
        budget=row["budget"], segment_attribute=row["segment_attribute"],
        min_sample=row["min_sample"], sequential=bool(row["sequential"]), owner=row["owner"],
        created_at=row["created_at"], updated_at=row["updated_at"],
        started_at=row["started_at"], completed_at=row["completed_at"],
        variants=[
            Variant(id=v["id"], model=v["model"], name=v["name"],
                    prompt_template=v["prompt_template"], parameters=json.loads(v["parameters"]),
                    weight=v["weight"], factors=json.loads(v["factors"]), paused=bool(v["paused"]))
            for v in variants
        ],
        metrics=[Metric(MetricName(m["name"]), Role(m["role"]), Goal(m["goal"])) for m in metrics],
    )


def get(conn: sqlite3.Connection, experiment_id: str) -> Experiment | None:
    found = every(conn, experiment_id)
    return found[0] if found else None


def every(conn: sqlite3.Connection, experiment_id: str | None = None) -> list[Experiment]:
    """Every experiment (or the one with ``experiment_id``), oldest first: three
    queries whatever their number."""
    where, args = (" WHERE experiment_id=?", (experiment_id,)) if experiment_id else ("", ())
    rows = conn.execute(
        "SELECT * FROM experiments" + (" WHERE id=?" if experiment_id else "")
        + " ORDER BY created_at, id", args).fetchall()
    variants: dict[str, list[sqlite3.Row]] = {}
    for v in conn.execute(f"SELECT * FROM experiment_variants{where} ORDER BY position", args):
        variants.setdefault(v["experiment_id"], []).append(v)
    metrics: dict[str, list[sqlite3.Row]] = {}
    for m in conn.execute(f"SELECT * FROM experiment_metrics{where} ORDER BY position", args):
        metrics.setdefault(m["experiment_id"], []).append(m)
    return [_from_rows(r, variants.get(r["id"], []), metrics.get(r["id"], [])) for r in rows]


def assign(conn: sqlite3.Connection, assignment: Assignment) -> Assignment:
    """Store ``assignment`` unless the unit has one already; the stored one."""
    a = assignment
    conn.execute(
        "INSERT OR IGNORE INTO experiment_assignments (experiment_id, unit, variant_id, phase, at)"
        " VALUES (?, ?, ?, ?, ?)", (a.experiment_id, a.unit, a.variant_id, a.phase, a.at))
    found = assignment_of(conn, a.experiment_id, a.unit)
    assert found is not None
    return found


def assignment_of(conn: sqlite3.Connection, experiment_id: str, unit: str) -> Assignment | None:
    row = conn.execute(
        "SELECT experiment_id, unit, variant_id, phase, at FROM experiment_assignments"
        " WHERE experiment_id=? AND unit=?", (experiment_id, unit)).fetchone()
    return Assignment(*row) if row else None


def observations(conn: sqlite3.Connection, experiment_id: str,
                 segment_attribute: str | None) -> list[Observation]:
    """One ``Observation`` per enrolled job, oldest first, from its columns alone
    (and its unit's stored assignment, for the phase the unit was bucketed in).

    ``succeeded`` is None for a job not finished yet and for a cancelled one (a
    client's cancel says nothing of the variant); queue wait runs from creation to
    the provider taking the job (``submitting_at``), run time from then to its end.
    """
    segment = "NULL" if not segment_attribute else "json_extract(j.metadata, ?)"
    args: tuple[Any, ...] = (experiment_id,)
    if segment_attribute:
        args = ('$."' + segment_attribute.replace('"', "") + '"', experiment_id)
    rows = conn.execute(
        f"SELECT j.variant_id, j.unit, j.state, j.created_at, j.submitting_at,"
        f" j.completed_at, j.cost, j.rating, j.segment, a.phase FROM ("
        f"SELECT seq, experiment_id, variant_id, {UNIT_SQL} AS unit, state, created_at,"
        f" submitting_at, completed_at, cost, rating, {segment} AS segment"
        " FROM generation_requests j WHERE experiment_id=? AND variant_id IS NOT NULL) j"
        " LEFT JOIN experiment_assignments a"
        " ON a.experiment_id = j.experiment_id AND a.unit = j.unit ORDER BY j.seq", args)
    found = []
    for variant, unit, state, created, submitting, completed, cost, rating, seg, phase in rows:
        succeeded = True if state == "SUCCEEDED" else False if state == "FAILED" else None
        found.append(Observation(
            variant_id=variant, unit=unit, succeeded=succeeded,
            queue_wait=submitting - created if submitting is not None else None,
            run_time=(completed - submitting
                      if succeeded is not None and submitting is not None and completed
                      else None),
            cost=cost, rating=rating, segment=None if seg is None else str(seg),
            created_at=created, phase=phase,
        ))
    return found


def spend(conn: sqlite3.Connection, experiment_id: str) -> float:
    """The summed ``cost`` of the experiment's enrolled jobs."""
    row = conn.execute(
        "SELECT COALESCE(SUM(cost), 0) FROM generation_requests"
        " WHERE experiment_id=? AND variant_id IS NOT NULL", (experiment_id,)).fetchone()
    return float(row[0])


def recent_jobs(conn: sqlite3.Connection, experiment_id: str, variant_id: str,
                limit: int) -> list[Job]:
    """The variant's newest succeeded jobs, newest first."""
    rows = conn.execute(
        "SELECT * FROM generation_requests WHERE experiment_id=? AND variant_id=?"
        " AND state='SUCCEEDED' ORDER BY seq DESC LIMIT ?",
        (experiment_id, variant_id, limit))
    return [jobs.from_row(row) for row in rows]

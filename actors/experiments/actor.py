"""The experiments actor: what running experiments need done on a clock.

It owns no mailbox: its inputs are the service's cache of running experiments
(``ExperimentService.running``, woken by ``ExperimentService.changed`` when one
changes) and the clock. At start it loads that cache (so enrolment has it before
the HTTP API opens), then, for each running experiment:

- with a ``budget``: every ``BUDGET_CHECK_SECONDS``, reads its spend (the summed
  ``cost`` of its enrolled jobs) and pauses it once the spend reaches the budget;
- with ``allocation: bandit``: once its ``bandit.cadence`` has passed since its
  weights last changed (``updated_at``, so a restart keeps the rhythm) or it last
  looked, asks the bandit for new weights from the stored observations
  (``bandit.reweigh``) and stores them (``bandit.apply_decision``: a new phase when
  the shares move), pausing the arms it says to pause. Stored assignments never
  move: only units not yet assigned follow the new weights.

With nothing to watch it sleeps until an experiment changes, so an idle daemon
has no timer running for it.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import trio

from actors.clock import wall_now
from actors.errors import EaselError
from actors.experiments import bandit
from actors.experiments.model import Allocation, Experiment
from actors.experiments.service import ExperimentService
from actors.monitor import Monitor

log = logging.getLogger(__name__)

#: Seconds between two reads of a budgeted experiment's spend.
BUDGET_CHECK_SECONDS = 30.0


class ExperimentsActor:
    def __init__(self, service: ExperimentService, *, monitor: Monitor,
                 rng: np.random.Generator | None = None) -> None:
        """``rng``: the bandit's random draws (seeded in tests)."""
        self.service = service
        self.monitor = monitor
        self._rng = rng or np.random.default_rng()
        #: Experiment id -> each arm's run of low chances to be best (the bandit's).
        self._streaks: dict[str, dict[str, int]] = {}
        #: Experiment id -> when its spend is next read.
        self._budget_due: dict[str, float] = {}
        #: Experiment id -> when the bandit last looked (weights changed or not).
        self._looked: dict[str, float] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.service.store.barrier()
        await self.service.refresh()
        task_status.started()
        while True:
            changed = self.service.changed
            await self.tick()
            due = self._next_due()
            with trio.move_on_after(max(0.0, due - wall_now())) if math.isfinite(due) \
                    else trio.CancelScope():
                await changed.wait()

    def _next_due(self) -> float:
        """When the next piece of work is due (inf: none until something changes)."""
        times = [math.inf]
        for experiment in self.service.running():
            if experiment.budget is not None:
                times.append(self._budget_due.get(experiment.id, 0.0))
            if experiment.allocation is Allocation.BANDIT:
                times.append(self._reweigh_due(experiment))
        return min(times)

    def _reweigh_due(self, experiment: Experiment) -> float:
        last = max(experiment.updated_at, experiment.started_at or 0.0,
                   self._looked.get(experiment.id, 0.0))
        return last + experiment.bandit.cadence

    async def tick(self) -> None:
        """Do whatever is due now."""
        now = wall_now()
        for experiment in list(self.service.running()):
            try:
                if experiment.budget is not None and \
                        self._budget_due.get(experiment.id, 0.0) <= now:
                    self._budget_due[experiment.id] = now + BUDGET_CHECK_SECONDS
                    if await self.check_budget(experiment):
                        continue
                if experiment.allocation is Allocation.BANDIT and \
                        self._reweigh_due(experiment) <= now:
                    await self.reweigh(experiment)
            except EaselError as exc:  # it changed meanwhile (completed, paused)
                log.info("experiment skipped: %s", exc.info.message,
                         extra={"experiment": experiment.id})

    async def check_budget(self, experiment: Experiment) -> bool:
        """Pause ``experiment`` if its spend has reached its budget; whether it did."""
        assert experiment.budget is not None
        spent = await self.service.store.experiment_spend(experiment.id)
        if spent < experiment.budget:
            return False
        await self.service.pause(experiment.id)
        self.monitor.emit("experiment.budget", experiment=experiment.id, spent=spent,
                          budget=experiment.budget)
        log.warning("experiment paused: its budget is spent",
                    extra={"experiment": experiment.id, "spent": spent,
                           "budget": experiment.budget})
        return True

    async def reweigh(self, experiment: Experiment) -> None:
        """New bandit weights from the stored observations, as a new phase."""
        self._looked[experiment.id] = wall_now()
        observations = await self.service.store.observations(experiment.id)
        decision = bandit.reweigh(experiment, observations, self._rng,
                                  low_streaks=self._streaks.get(experiment.id))
        self._streaks[experiment.id] = decision.low_streaks
        if not decision.ready:  # not every arm has its minimum sample yet
            return
        self.service.p_best[experiment.id] = decision.p_best
        await self.service.reweighed(experiment.id, decision)
        self.monitor.emit("experiment.reweighed", experiment=experiment.id,
                          weights=decision.weights)

"""The planted effect end to end: 2,000 jobs through a daemon and the sandbox,
variant B 10 points more successful, and the results declare B with the
confidence they compute.

The effect is planted with the sandbox's own fault knob (a prompt holding
``[fail]`` fails). A fifth of the clients' prompts hold ``[fail]`` (failing under
either variant); a tenth end in ``[fail``, which variant A's template
``{prompt}]`` completes into ``[fail]``. So A succeeds about 70 % of the time and
B about 80 %. Jobs go through ``Runtime.submit`` (the one submission path every
front door uses), are enrolled, rewritten, run by the sandbox and finalized;
the results are read from the stored rows, as the admin API reads them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import trio

from actors.jobs import JobState
from actors.validation import job_from, parse_submission, request_hash
from tests.test_experiments_api import BODY, CONFIG

JOBS = 2000


async def test_a_planted_effect_through_the_sandbox_is_declared(easel_daemon: Any) -> None:
    easel = await easel_daemon(CONFIG.replace("delay = 0.05", "delay = 0"))
    runtime = easel.runtime
    experiment = await runtime.experiments.create(BODY)
    await runtime.experiments.start(experiment.id)
    rng = np.random.default_rng(15)
    draws = rng.random(JOBS)
    prompts = [f"picture {n} [fail]" if draw < 0.2 else f"picture {n} [fail" if draw < 0.3
               else f"picture {n}" for n, draw in enumerate(draws)]
    ids: list[str] = []
    limit = trio.CapacityLimiter(64)

    async def send(n: int) -> None:
        async with limit:
            body = {"modelIdentifier": "sandbox-image", "prompt": prompts[n],
                    "userId": f"user-{n}"}
            parsed = parse_submission(body, runtime.catalog, runtime.families)
            job, _ = await runtime.submit(job_from(parsed, runtime.catalog,
                                                   idempotency_key=None,
                                                   body_hash=request_hash(body)))
            ids.append(job.id)

    async with trio.open_nursery() as nursery:
        for n in range(JOBS):
            nursery.start_soon(send, n)
    with trio.fail_after(600):
        for job_id in ids:
            await runtime.wait_for_job(job_id, 600)
    ended = [await runtime.get_job(job_id) for job_id in ids]
    assert all(job.state.terminal and job.experiment_id == experiment.id for job in ended)
    outcomes: dict[str, list[bool]] = {"A": [], "B": []}
    for job in ended:
        outcomes[job.variant_id or ""].append(job.state is JobState.SUCCEEDED)

    results = await runtime.experiments.results(experiment.id)
    assert results.srm is not None and not results.srm.mismatch
    assert results.winner is not None and results.winner.variant_id == "B"
    assert results.winner.confidence > 0.99
    rates = {variant: sum(found) / len(found) for variant, found in outcomes.items()}
    assert 0.05 < rates["B"] - rates["A"] < 0.15
    print(f"\nplanted effect through the sandbox: A {rates['A']:.3f}"
          f" (n={len(outcomes['A'])}), B {rates['B']:.3f} (n={len(outcomes['B'])});"
          f" winner {results.winner.variant_id}, confidence"
          f" {results.winner.confidence:.6f}: {results.winner.recommendation}")

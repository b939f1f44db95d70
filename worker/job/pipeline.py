"""One job, from pick-up to stored output, read top to bottom in `run_job`.

    start -> already stored? -> admit -> read source -> buy -> store -> finish

Each step is a function of this package that takes and returns values (frozen dataclasses:
`Run`, `Found`, `Slot`, `Source`, `Bought`, `Stored`); whatever a step raises ends in one row
of the outcome table (`worker.outcomes`: fail / wait / attempt), applied by `finish.settle`.
Money rules: the call is journaled before it leaves; a paid answer is saved with its spend
before anything else; an unknown outcome counts as possibly billed; a run that lost its lease
(reclaimed after a stall) cannot write: the ledger's scripts check its token.

The modules a reader crosses, in the order the job does:

 1. `worker.job.pipeline`     this function
 2. `worker.job.run`          the run: its lease (`start`), frame (`running`), time limit
 3. `worker.job.destination`  is the output already there? (and what the write expects)
 4. `worker.job.admit`        a slot in the fleet's flow control
 5. `worker.job.source`       read, check and prepare the source; how it goes upstream
 6. `worker.job.buy`          the paid call, made the way its route makes calls
 7. `worker.job.store`        the result into S3 (conditional write, provenance metadata)
 8. `worker.job.finish`       the final state, or the outcome table's row for an exception
 9. `worker.outcomes`         the outcome table
10. `worker.ledger.transitions` the ledger's transitions (one Lua script each, `worker/lua/`)
11. `worker.flow.admission`   admission and the slot's lease (`admit.lua`)
12. `worker.upstream.gateway` the route's adapter (`ideogram` for the direct route)
13. `worker.images`           validate and prepare the source image
14. `worker.output`           the result in the output format, streamed into S3
15. `worker.storage`          S3
"""

from __future__ import annotations

from worker.contract import JobSpec
from worker.job import buy, destination, finish
from worker.job.admit import admit
from worker.job.run import Job, Reply, Run, running, start, time_limit
from worker.job.source import Source, read
from worker.job.store import store
from worker.runtime import Runtime


async def run_job(rt: Runtime, spec: JobSpec, job_id: str) -> Reply:
    """Run the job `job_id` once (arq's entry point, `worker.app.upscale`, calls this)."""
    job = Job.new(rt, spec, job_id)
    with destination.looking(job) as look:  # the destination's HEAD, beside the start
        run = await start(job)  # the run lease (a final, busy or missing job ends here)
        if not isinstance(run, Run):
            return run
        source: Source | None = None
        async with running(job, run):  # lease renewed; a stopping worker hands the job back
            try:
                async with time_limit(job):
                    bought = await buy.resume(job, run)  # what an earlier run paid for
                    if bought is None:
                        if found := await destination.already_stored(job, look):
                            return await finish.done(job, found)
                        slot = await admit(job, prefer=run.prefer)
                        source = await read(job, slot)
                        bought = await buy.buy(job, slot, source)
                    return await finish.done(job, await store(job, bought, look))
            except Exception as exc:  # the outcome table: fail, wait or attempt (`Retry`)
                return await finish.settle(job, exc, source)

"""Built-in assignment plugin: the fair default strategy, and the assigner's place in the application's life."""
from __future__ import annotations

from datetime import timedelta

from router import hookimpl
from router.channels import ScheduledJob
from router.core.assigner import ASSIGNER, Assigner
from router.core.workforce import fairness_of

TICK = timedelta(seconds=1)


def fairness_key(agent):
    """Least loaded (over all channels) first, then the one who has waited longest since their last offer,
    then by id. The workforce index keeps candidates in this order (router.core.workforce) and hands each
    available agent its key, which is used when present."""
    return getattr(agent, "fairness", None) or fairness_of(agent)


@hookimpl(trylast=True)
def switchboard_choose_agent(candidates):
    # Candidates arrive fairest first; sorting again is cheap and keeps this strategy right for any caller.
    return min(candidates, key=fairness_key) if candidates else None


@hookimpl
async def switchboard_startup(switchboard):
    assigner = switchboard.stash[ASSIGNER] = Assigner(switchboard)
    await assigner.load()
    if switchboard.background:
        assigner.start()


@hookimpl
async def switchboard_shutdown(switchboard):
    assigner = switchboard.stash.pop(ASSIGNER, None)
    if assigner is not None:
        await assigner.stop()


@hookimpl
def switchboard_scheduled_jobs(switchboard):
    async def tick():
        assigner = switchboard.stash.get(ASSIGNER)
        if assigner is not None:
            await assigner.tick()

    return [ScheduledJob("assignment.tick", tick, TICK, run_at_start=True)]


@hookimpl
def switchboard_case_event(event, switchboard):
    assigner = switchboard.stash.get(ASSIGNER)
    if assigner is not None:
        assigner.notice(event)

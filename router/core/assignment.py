"""Built-in assignment strategy: fair, so the first agent online does not get everything."""
from __future__ import annotations

from datetime import datetime, timezone

from router import hookimpl

_NEVER = datetime.min.replace(tzinfo=timezone.utc)


def fairness_key(agent):
    """Least loaded first, then the one who has waited longest since their last assignment, then by id."""
    return (agent.load, agent.last_assigned_at or _NEVER, agent.id)


@hookimpl(trylast=True)
def switchboard_choose_agent(candidates):
    return min(candidates, key=fairness_key) if candidates else None

"""Supervisor and operator views: the live picture (queues, SLA risk, agents) from assignment's working set,
and service metrics over a period (first response, resolution, resolution rate, CSAT) from the store.

Times are wall-clock seconds from the case's creation (not business hours); SLA clocks, which do follow
business hours, are what the live view's risk and breach counts use. A supervisor sees their lines and teams.
"""
from __future__ import annotations

import csv
import io
import statistics
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from aiohttp import web

from router.core.assigner import HELD_STATUSES
from router.web.api import switchboard_of
from router.web.assignment_api import _assigner, agent_json
from router.web.auth import require
from router.web.errors import HTTPProblem

GROUPS = ("line", "team", "channel", "agent")
MAX_PERIOD = timedelta(days=366)


async def overview(request: web.Request) -> web.Response:
    who = await require(request, "supervise")
    assigner = _assigner(request)
    now = switchboard_of(request).clock.now()
    queues: dict[tuple, dict[str, Any]] = {}
    risky = []
    for work in assigner.cases.values():
        case = work.case
        if not who.covers(case.line, case.team):
            continue
        row = queues.setdefault((case.line, case.team, case.channel), {
            "line": case.line, "team": case.team, "channel": case.channel, "waiting": 0, "held": 0,
            "oldest_queued_at": None, "oldest_wait_seconds": 0, "at_risk": 0, "breached": 0})
        if case.status in HELD_STATUSES:
            row["held"] += 1
        else:  # queued, or offered and not yet accepted: still waiting for someone
            row["waiting"] += 1
            waited = (now - work.queued_at).total_seconds()
            if waited >= row["oldest_wait_seconds"]:
                row["oldest_wait_seconds"], row["oldest_queued_at"] = round(waited), work.queued_at.isoformat()
        running = [c for c in (work.sla.clocks.values() if work.sla else ()) if c["stopped"] is None]
        breached = any(c["breached"] for c in running)
        at_risk = not breached and any(c["warned"] for c in running)
        if breached or at_risk:
            row["breached" if breached else "at_risk"] += 1
            due = work.sla.earliest_due() if work.sla else None
            risky.append({"ref": case.ref, "line": case.line, "team": case.team, "channel": case.channel,
                          "status": case.status.value, "priority": case.priority,
                          "agent": work.offer.agent_id if work.offer else work.agent_id,
                          "due": due.isoformat() if due else None, "breached": breached})
    rows = sorted(queues.values(), key=lambda r: (-r["breached"], -r["oldest_wait_seconds"], str(r["line"])))
    agents = [agent_json(assigner, a.id, who) for a in sorted(assigner.workforce, key=lambda a: a.id)
              if _agent_in_scope(who, assigner.definitions[a.id])]
    return web.json_response({
        "at": now.isoformat(),
        "totals": {"waiting": sum(r["waiting"] for r in rows), "held": sum(r["held"] for r in rows),
                   "at_risk": sum(r["at_risk"] for r in rows), "breached": sum(r["breached"] for r in rows),
                   "oldest_wait_seconds": max((r["oldest_wait_seconds"] for r in rows), default=0),
                   "agents_online": sum(1 for a in agents if a["presence"] == "online")},
        "queues": rows,
        "cases_at_risk": sorted(risky, key=lambda r: (not r["breached"], r["due"] or "")),
        "agents": [{k: a[k] for k in ("id", "name", "presence", "in_schedule", "load", "capacity", "cases", "offers")}
                   for a in agents],
    })


def _agent_in_scope(who, definition) -> bool:
    """An agent works for a supervisor when they share a line or a team (an agent without lines works all)."""
    if who.covers(None, None):
        return True
    return bool(not definition.lines and who.lines or set(who.lines) & set(definition.lines)
                or set(who.teams) & set(definition.teams))


def _period(request: web.Request, default: timedelta) -> tuple[datetime, datetime]:
    now = switchboard_of(request).clock.now()
    try:
        until = _when(request.query.get("to")) or now
        since = _when(request.query.get("from")) or until - default
        since.astimezone(timezone.utc), until.astimezone(timezone.utc)  # what the store will do with them
    except ValueError as exc:
        raise HTTPProblem(400, "bad_request", f"from and to are ISO 8601 times: {exc}") from None
    except OverflowError:
        raise HTTPProblem(400, "bad_request", "from and to must lie between the years 1 and 9999 in UTC, "
                                              "with the default period of the report before to") from None
    if since >= until:
        raise HTTPProblem(400, "bad_request", "from must be before to")
    if until - since > MAX_PERIOD:
        raise HTTPProblem(400, "bad_request", "a report covers at most 366 days")
    return since, until


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start is not None and end is not None else None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=10, method="inclusive")[-1], 1)


def summarise(key: str, rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    rows = list(rows)
    first = [s for r in rows if (s := _seconds(r["created_at"], r["first_response_at"])) is not None]
    resolution = [s for r in rows if (s := _seconds(r["created_at"], r["resolved_at"])) is not None]
    scores = [r["csat"] for r in rows if r["csat"] is not None]
    return {
        "key": key, "created": len(rows), "resolved": len(resolution),
        "resolution_rate": round(len(resolution) / len(rows), 3) if rows else None,
        "first_response_median_seconds": _median(first), "first_response_p90_seconds": _p90(first),
        "resolution_median_seconds": _median(resolution),
        "csat_average": round(sum(scores) / len(scores), 2) if scores else None, "csat_responses": len(scores),
    }


def _group_key(row: dict[str, Any], by: str) -> str:
    if by == "agent":  # who resolved it, else who last held it, else who first answered
        return row["resolved_by"] or row["holder"] or row["first_response_by"] or "(nobody)"
    return row[by] or "(none)"


async def metrics_report(request: web.Request) -> web.Response:
    who = await require(request, "supervise")
    by = request.query.get("by", "line")
    if by not in GROUPS:
        raise HTTPProblem(400, "bad_request", f"by must be one of {list(GROUPS)}, not {by!r}")
    since, until = _period(request, timedelta(days=7))
    rows = [r for r in await switchboard_of(request).store.read(lambda tx: tx.report_rows(since, until))
            if who.covers(r["line"], r["team"])]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_group_key(row, by), []).append(row)
    report = [summarise(key, items) for key, items in sorted(groups.items())]
    report.append(summarise("(all)", rows))
    if request.query.get("format") == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[by, *list(report[0])[1:]], lineterminator="\n")
        writer.writeheader()
        for item in report:
            writer.writerow({by: item["key"], **{k: v for k, v in item.items() if k != "key"}})
        name = f"switchboard-metrics-by-{by}-{since:%Y%m%d}-{until:%Y%m%d}.csv"
        return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})
    return web.json_response({"from": since.isoformat(), "to": until.isoformat(), "by": by, "rows": report})


async def volume_report(request: web.Request) -> web.Response:
    who = await require(request, "supervise")
    bucket = request.query.get("bucket", "hour")
    if bucket not in ("hour", "day"):
        raise HTTPProblem(400, "bad_request", "bucket must be hour or day")
    since, until = _period(request, timedelta(hours=24) if bucket == "hour" else timedelta(days=14))
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    start = since.replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        start = start.replace(hour=0)
    if (until - start) / step > 1000:
        raise HTTPProblem(400, "bad_request", "too many buckets: choose a shorter period or bucket=day")
    rows = [r for r in await switchboard_of(request).store.read(lambda tx: tx.report_rows(start, until))
            if who.covers(r["line"], r["team"])]
    count = -(-(until - start) // step)
    created: list[list[dict[str, Any]]] = [[] for _ in range(count)]
    resolved = [0] * count
    for row in rows:  # one pass: each case counts in the bucket it was created in, and the one it was resolved in
        created[int((row["created_at"] - start) / step)].append(row)
        if row["resolved_at"] is not None and start <= row["resolved_at"] < until:
            resolved[int((row["resolved_at"] - start) / step)] += 1
    buckets = []
    for i in range(count):
        first = [s for r in created[i] if (s := _seconds(r["created_at"], r["first_response_at"])) is not None]
        buckets.append({"start": (start + i * step).isoformat(), "created": len(created[i]), "resolved": resolved[i],
                        "first_response_median_seconds": _median(first)})
    return web.json_response({"from": start.isoformat(), "to": until.isoformat(), "bucket": bucket,
                              "buckets": buckets})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/supervisor/overview", overview),
        web.get("/api/v1/reports/metrics", metrics_report),
        web.get("/api/v1/reports/volume", volume_report),
    ]

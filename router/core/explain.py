"""Why a case went where it went: its routing and assignment decisions read back from the event log.

Used by ``GET /api/v1/cases/{ref}/explain`` and ``switchboard explain <ref>``; both show the same record.
"""
from __future__ import annotations

from typing import Any

from router.core.store.base import Store

# Events that are decisions (or their consequences) worth explaining, in the order they happen.
DECISIONS = (
    "case.created", "case.reopened", "case.routed", "assignment.queued", "assignment.waiting", "offer.created",
    "offer.declined", "offer.expired", "offer.rescinded", "assignment.accepted", "case.escalated",
    "case.transferred", "case.requeued", "sla.warning", "sla.breached", "sla.met", "sla.met_late",
    "supervisors.notified", "case.status_changed",
)


async def explain_case(store: Store, ref: str) -> dict[str, Any] | None:
    async def unit(tx):
        case = await tx.case_by_ref(ref)
        if case is None:
            return None
        return case, await tx.events_for_case(case.id), await tx.offers_for_case(case.id)

    found = await store.read(unit)
    if found is None:
        return None
    case, events, offers = found
    return {
        "case": {"ref": case.ref, "status": case.status.value, "channel": case.channel, "line": case.line,
                 "team": case.team, "tier": case.tier, "priority": case.priority},
        "route": {k: case.route.get(k) for k in ("rule", "reasons", "labels", "required_skills", "preferred_skills",
                                                  "sla_policy", "escalation", "safety_lane")},
        "decisions": [{"at": e.at.isoformat(), "type": e.type, "actor": e.actor, **e.data}
                      for e in events if e.type in DECISIONS],
        "offers": [{"id": o["id"], "agent": o["agent_id"], "status": o["status"],
                    "created_at": _iso(o["created_at"]), "decided_at": _iso(o["decided_at"]), "reason": o["reason"]}
                   for o in offers],
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else value


def format_explanation(data: dict[str, Any]) -> str:
    """The explanation as an operator reads it in a terminal."""
    case, route = data["case"], data["route"]
    lines = [f"{case['ref']}  {case['status']}  channel {case['channel']}  line {case['line'] or '-'}  "
             f"team {case['team'] or '-'}  tier {case['tier'] or '-'}  priority {case['priority']}"]
    labels = route.get("labels") or {}
    if labels:
        shown = {k: v for k, v in labels.items() if k in ("language", "topics", "urgency", "line") and v}
        lines.append("classified: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    for reason in route.get("reasons") or []:
        lines.append(f"routed: {reason}")
    lines.append("")
    for d in data["decisions"]:
        at = d["at"][:19].replace("T", " ")
        kind = d["type"]
        if kind in ("offer.created", "assignment.waiting"):
            head = f"offered to {d['chosen']}" if kind == "offer.created" else "waiting: nobody can take it now"
            lines.append(f"{at}  {head}")
            lines.append(f"    needs {' AND '.join('(' + ' or '.join(g) + ')' for g in d['requirement']) or 'anyone'}"
                         f" on {d['channel']}" + ("  [safety lane]" if d.get("safety_lane") else "")
                         + ("  [over capacity]" if d.get("over_capacity") else ""))
            for c in d.get("candidates", [])[:5]:
                lines.append(f"    candidate {c['agent']}: load {c['load']}, last offer {c['last_assigned_at'] or 'never'}")
            passed = {k: v for k, v in d.get("passed_over", {}).items() if v}
            for reason, n in passed.items():
                examples = d.get("examples", {}).get(reason) or []
                lines.append(f"    passed over {n} for {reason.replace('_', ' ')}"
                             + (f" (e.g. {', '.join(examples)})" if examples else ""))
            if d.get("note"):
                lines.append(f"    note: {d['note']}")
        elif kind.startswith("offer."):
            lines.append(f"{at}  offer to {d['agent']} {kind.split('.')[1]}: {d.get('reason') or ''}".rstrip(": "))
        elif kind == "assignment.accepted":
            lines.append(f"{at}  accepted by {d['agent']} after {d['waited_seconds']:.0f} s in the queue")
        elif kind == "case.escalated":
            what = f"step {d['step']} of {d['policy']}" if "step" in d else d.get("reason", "")
            lines.append(f"{at}  escalated ({what}) -> {json_short(d.get('to') or d.get('widening'))}")
        elif kind.startswith("sla."):
            lines.append(f"{at}  SLA {kind.split('.')[1].replace('_', ' ')}: {d.get('clock')} (due {d.get('due')})")
        elif kind == "assignment.queued":
            lines.append(f"{at}  queued (SLA policy {d.get('sla_policy') or 'none'})")
        else:
            details = {k: v for k, v in d.items() if k not in ("at", "type", "actor", "route", "labels")}
            lines.append(f"{at}  {kind} by {d['actor']} {json_short(details)}")
    return "\n".join(lines)


def json_short(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, False, [], {}))
    return str(value)

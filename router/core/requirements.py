"""What an agent must hold to take a case, and what an agent holds: both as skills the workforce index matches.

An agent's configuration becomes skills in four built-in namespaces plus free-form ones:

* ``line:<line>`` for every line the agent serves (``line:*`` when the agent lists none: every line);
* ``team:<team>`` for every team, ``tier:<tier>`` for the agent's tier;
* ``lang:<code>`` at the agent's level in that language; free-form skills (``vip``, ``legal``) at their level.

A case's requirement is a list of groups, every group to be met by one of its alternatives: its line, its
team (or the overflow team an escalation step opened), its tier (or the next one, once escalation allows it),
each required skill and, until an escalation step drops them, each preferred skill. Preferred skills work
like Zendesk's optional skills and TaskRouter's first workflow target: they narrow the first offers and are
given up after a time, so a case is never stuck behind them for ever.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from router.core.workforce import Requirement, requirement

__all__ = ["Widening", "agent_skills", "requirement_for", "next_tier"]


@dataclass(frozen=True, slots=True)
class Widening:
    """How far escalation has widened a case's requirement."""

    drop_preferred: bool = False
    allow_next_tier: bool = False
    overflow_team: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"drop_preferred": self.drop_preferred, "allow_next_tier": self.allow_next_tier,
                "overflow_team": self.overflow_team}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Widening":
        data = data or {}
        return cls(bool(data.get("drop_preferred")), bool(data.get("allow_next_tier")), data.get("overflow_team"))


def next_tier(tier: str | None, tiers: list[str]) -> str | None:
    """The tier above `tier` in the configured order, or None at the top (or for an unknown tier)."""
    if tier in tiers:
        index = tiers.index(tier)
        return tiers[index + 1] if index + 1 < len(tiers) else None
    return None


def agent_skills(*, lines: Iterable[str], teams: Iterable[str], tier: str, languages: dict[str, int],
                 skills: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    lines = list(lines)
    for line in lines or ["*"]:
        out[f"line:{line}"] = 1
    for team in teams:
        out[f"team:{team}"] = 1
    out[f"tier:{tier}"] = 1
    for code, level in languages.items():
        out[f"lang:{code}"] = level
    out.update(skills)
    return out


def requirement_for(*, line: str | None, team: str | None, tier: str | None, required_skills: Iterable[str],
                    preferred_skills: Iterable[str], tiers: list[str],
                    widening: Widening = Widening(), overflow_tier: str | None = None) -> Requirement:
    """`overflow_tier`: the tier of the overflow team, whose agents may take the case at their own tier."""
    groups: list[list[Any]] = []
    if line:
        groups.append([f"line:{line}", ("line:*", 1)])  # a tuple: "*" is not a name operators may write
    if team:
        groups.append([f"team:{team}"] + ([f"team:{widening.overflow_team}"] if widening.overflow_team else []))
    if tier:
        group = [f"tier:{tier}"]
        above = next_tier(tier, tiers) if widening.allow_next_tier else None
        if above:
            group.append(f"tier:{above}")
        if widening.overflow_team and overflow_tier and overflow_tier not in (tier, above):
            group.append(f"tier:{overflow_tier}")
        groups.append(group)
    groups.extend([skill] for skill in required_skills)
    if not widening.drop_preferred:
        groups.extend([skill] for skill in preferred_skills)
    return requirement(*groups)

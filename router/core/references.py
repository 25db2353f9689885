"""Cross-references in the routing configuration: every name used is defined, every rule can be reached."""
from __future__ import annotations

from typing import TYPE_CHECKING

from router.core.expressions import Expression, ExpressionError
from router.routing_config import (
    BUILTIN_SKILL_NAMESPACES,
    LIST_CONDITION_FIELDS,
    RouteSpec,
    RuleWhen,
    parse_skill_requirement,
)

if TYPE_CHECKING:  # pragma: no cover
    from router.config import Config
    from router.routing_config import AgentConfig

URGENCIES = ("safety", "normal")
EXACT_CONDITIONS = ("pattern", "business_hours", "expr")


def check_references(config: "Config") -> list[str]:
    """Problems as 'key.path: what is wrong', in file order."""
    problems: list[str] = []
    known = _Known(config)

    for name, line in config.lines.items():
        at = f"lines.{name}"
        known.calendar(line.calendar, f"{at}.calendar", problems)
        known.subset(line.languages, config.instance.languages, "language", f"{at}.languages", problems)
        known.subset(line.roles, config.instance.roles, "role", f"{at}.roles", problems)
        known.name(line.sla_policy, config.sla_policies, "SLA policy", f"{at}.sla_policy", problems)
    seen_accounts: dict[tuple[str, str], str] = {}
    for name, line in config.lines.items():
        for i, ref in enumerate(line.accounts):
            key = (ref.channel, ref.account)
            if key in seen_accounts:
                problems.append(f"lines.{name}.accounts[{i}]: {ref.channel} account {ref.account!r} already feeds "
                                f"line {seen_accounts[key]!r}; an account belongs to one line")
            seen_accounts[key] = name
    for name, team in config.teams.items():
        known.name(team.tier, config.tiers, "tier", f"teams.{name}.tier", problems)
        known.subset(team.lines, list(config.lines), "line", f"teams.{name}.lines", problems)
    for name, policy in config.sla_policies.items():
        known.calendar(policy.calendar, f"sla_policies.{name}.calendar", problems)
        for i, override in enumerate(policy.overrides):
            at = f"sla_policies.{name}.overrides[{i}].when"
            known.subset(override.when.line or [], list(config.lines), "line", f"{at}.line", problems)
            known.subset(override.when.team or [], list(config.teams), "team", f"{at}.team", problems)
    for name, policy in config.escalation_policies.items():
        for i, step in enumerate(policy.steps):
            known.name(step.overflow_team, config.teams, "team", f"escalation_policies.{name}.steps[{i}]"
                       ".overflow_team", problems)
    for name, topic in config.classification.topics.items():
        known.subset([k for k in topic.keywords if k != "any"], config.instance.languages, "language",
                     f"classification.topics.{name}.keywords", problems)
    known.subset(list(config.classification.safety), [*config.instance.languages, "any"], "language",
                 "classification.safety", problems)

    for i, rule in enumerate(config.routing.rules):
        at = f"routing.rules[{i}]"
        _check_when(rule.when, known, f"{at}.when", problems)
        _check_route(rule.route, known, f"{at}.route", problems)
        for j, earlier in enumerate(config.routing.rules[:i]):
            if _covers(earlier.when, rule.when):
                problems.append(f"{at}: rule {rule.name!r} can never match: rule {earlier.name!r} "
                                f"(routing.rules[{j}]) matches everything it would; move it up or narrow "
                                f"{earlier.name!r}")
                break
    _check_route(config.routing.default, known, "routing.default", problems)

    ids = [a.id for a in config.agents]
    for i, agent in enumerate(config.agents):
        at = f"agents[{i}]"
        if ids.count(agent.id) > 1 and ids.index(agent.id) != i:
            problems.append(f"{at}.id: {agent.id!r} is used by another agent")
        problems.extend(check_agent(config, agent, at))
    account_ids = [a.id for a in config.accounts]
    for i, account in enumerate(config.accounts):
        at = f"accounts[{i}]"
        if account_ids.count(account.id) > 1 and account_ids.index(account.id) != i:
            problems.append(f"{at}.id: {account.id!r} is used by another account")
        agent = account.agent or (account.id if account.role == "agent" else None)
        if agent is not None and agent not in ids:
            problems.append(f"{at}.agent: no agent {agent!r} in agents; an agent account works as one of them")
        known.subset(account.lines, list(config.lines), "line", f"{at}.lines", problems)
        known.subset(account.teams, list(config.teams), "team", f"{at}.teams", problems)
        if account.password is not None and account.password_hash is not None:
            problems.append(f"{at}: give password or password_hash, not both")
    csat = config.csat
    if csat.followup_team is not None and "followup_team" in csat.model_fields_set:
        known.name(csat.followup_team, config.teams, "team", "csat.followup_team", problems)
    known.subset(list(csat.lines), list(config.lines), "line", "csat.lines", problems)
    return problems


def check_agent(config: "Config", agent: "AgentConfig", at: str = "agent") -> list[str]:
    """An agent's lines, teams, tier, languages, skills and calendar are all defined (config or API)."""
    problems: list[str] = []
    known = _Known(config)
    known.subset(agent.lines, list(config.lines), "line", f"{at}.lines", problems)
    known.subset(agent.teams, list(config.teams), "team", f"{at}.teams", problems)
    known.name(agent.tier, config.tiers, "tier", f"{at}.tier", problems)
    known.subset(list(agent.languages), config.instance.languages, "language", f"{at}.languages", problems)
    known.subset(list(agent.skills), config.skills, "skill", f"{at}.skills", problems)
    if agent.schedule is not None:
        known.calendar(agent.schedule.calendar, f"{at}.schedule.calendar", problems)
    return problems


class _Known:
    def __init__(self, config: "Config"):
        self.config = config

    def name(self, value: str | None, defined, kind: str, at: str, problems: list[str]) -> None:
        if value is not None and value not in defined:
            problems.append(f"{at}: unknown {kind} {value!r}; defined: {sorted(defined) or 'none'}")

    def subset(self, values, defined, kind: str, at: str, problems: list[str]) -> None:
        unknown = [v for v in values if v not in defined]
        if unknown:
            problems.append(f"{at}: unknown {kind}{'s' * (len(unknown) > 1)} {unknown}; defined: "
                            f"{sorted(defined) or 'none'}")

    def calendar(self, value: str | None, at: str, problems: list[str]) -> None:
        self.name(value, self.config.calendars, "calendar", at, problems)

    def skill(self, text: str, at: str, problems: list[str]) -> None:
        try:
            name, _level = parse_skill_requirement(text)
        except ValueError as exc:
            problems.append(f"{at}: {exc}")
            return
        namespace, _, value = name.partition(":")
        if namespace in BUILTIN_SKILL_NAMESPACES and value:
            defined = {"lang": [*self.config.instance.languages, "{language}"], "team": list(self.config.teams),
                       "line": list(self.config.lines), "tier": self.config.tiers}[namespace]
            self.name(value, defined, f"{namespace} in skill", at, problems)
        elif name not in self.config.skills:
            problems.append(f"{at}: unknown skill {name!r}; declare it under skills:, or use "
                            f"lang:/team:/line:/tier: skills")


def _check_when(when: RuleWhen, known: _Known, at: str, problems: list[str]) -> None:
    config = known.config
    known.subset(when.line or [], list(config.lines), "line", f"{at}.line", problems)
    known.subset(when.role or [], config.instance.roles, "role", f"{at}.role", problems)
    known.subset(when.language or [], config.instance.languages, "language", f"{at}.language", problems)
    known.subset(when.topic or [], list(config.classification.topics), "topic", f"{at}.topic", problems)
    known.subset(when.urgency or [], URGENCIES, "urgency", f"{at}.urgency", problems)
    if when.expr is not None:
        try:
            Expression(when.expr)
        except ExpressionError as exc:
            problems.append(f"{at}.expr: {exc}")


def _check_route(route: RouteSpec, known: _Known, at: str, problems: list[str]) -> None:
    config = known.config
    known.name(route.line, config.lines, "line", f"{at}.line", problems)
    known.name(route.team, config.teams, "team", f"{at}.team", problems)
    known.name(route.tier, config.tiers, "tier", f"{at}.tier", problems)
    known.name(route.sla, config.sla_policies, "SLA policy", f"{at}.sla", problems)
    known.name(route.escalation, config.escalation_policies, "escalation policy", f"{at}.escalation", problems)
    for i, skill in enumerate(route.required_skills):
        known.skill(skill, f"{at}.required_skills[{i}]", problems)
    for i, skill in enumerate(route.preferred_skills):
        known.skill(skill, f"{at}.preferred_skills[{i}]", problems)


def _covers(earlier: RuleWhen, later: RuleWhen) -> bool:
    """True when every message `later` matches is matched by `earlier` (so `later` is unreachable)."""
    for field in LIST_CONDITION_FIELDS:
        mine = getattr(earlier, field)
        if mine is None:
            continue
        theirs = getattr(later, field)
        if theirs is None or not set(theirs) <= set(mine):
            return False
    if earlier.keywords is not None:
        if later.keywords is None or not {k.lower() for k in later.keywords} <= {k.lower() for k in earlier.keywords}:
            return False
    return all(getattr(earlier, f) is None or getattr(earlier, f) == getattr(later, f) for f in EXACT_CONDITIONS)

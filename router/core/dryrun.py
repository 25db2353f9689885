"""Where would a message go? Routing without touching any state: for `switchboard route --dry-run` and the
operators' routing tests in config/tests/."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.core.model import Case, CaseStatus, Customer, InboundMessage, Route


@dataclasses.dataclass(slots=True)
class DryRun:
    route: Route
    labels: dict[str, Any]


def qualified_agents(config: Any, route: Route, *, drop_preferred: bool = False) -> list[str]:
    """Agents in the configuration holding every skill the route asks for (presence and schedule aside)."""
    from router.core.requirements import Widening, agent_skills, requirement_for
    from router.core.workforce import satisfies

    req = requirement_for(line=route.line, team=route.team, tier=route.tier, required_skills=route.required_skills,
                          preferred_skills=route.preferred_skills, tiers=config.tiers,
                          widening=Widening(drop_preferred=drop_preferred))
    return [a.id for a in config.agents
            if satisfies(agent_skills(lines=a.lines, teams=a.teams, tier=a.tier, languages=a.languages,
                                      skills=a.skills), req)]


def dry_route(switchboard: Any, message: InboundMessage, at: datetime | None = None) -> DryRun:
    """Classify and route `message` as the dispatcher would for a new case from a new customer."""
    sb = switchboard
    message = sb.dispatcher.normalise(message)
    now = at or sb.clock.now()
    customer = Customer(id=0, role=message.context.role, display_name=message.display_name,
                        language=message.language, created_at=now, identities=[message.sender])
    case = Case(id=0, ref="(dry run)", customer_id=0, status=CaseStatus.NEW, channel=message.channel,
                account=message.account, subject=message.subject, language=message.language, line=None, team=None,
                tier=None, priority=3, created_at=now, updated_at=now, order_id=message.context.order_id)
    labels = sb.hooks.classify(message=message, case=case, customer=customer, switchboard=sb)
    with sb.clock_at(now):
        route = sb.hooks.select_route(message=message, case=case, customer=customer, labels=labels, switchboard=sb)
    return DryRun(route=route or Route(reasons=["no routing plugin answered"]), labels=labels)


class Expectation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line: str | None = None
    team: str | None = None
    tier: str | None = None
    priority: int | None = None
    rule: str | None = None
    language: str | None = None
    urgency: str | None = None
    safety_lane: bool | None = None


class RoutingTest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    message: dict[str, Any]
    at: datetime | None = None
    expect: Expectation


class RoutingTestFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tests: list[RoutingTest] = Field(default_factory=list)


def message_from(data: dict[str, Any]) -> InboundMessage:
    """Test and dry-run messages may leave out what routing does not look at."""
    # Routed as from a trusted source: the platform context (role) in a test message is taken at its word.
    data = {"channel": "api", "external_id": "dry-run", "trusted": True, **data}
    return InboundMessage.model_validate(data)


def _problems(exc: ValidationError) -> str:
    """Each problem with its key path: `tests.0.expect.teem: unknown key`."""
    return "; ".join(f"{'.'.join(str(part) for part in error['loc']) or '(top)'}: "
                     f"{'unknown key (a typo?)' if error['type'] == 'extra_forbidden' else error['msg']}"
                     for error in exc.errors())


def run_routing_tests(switchboard: Any, folder: Path) -> tuple[int, list[str]]:
    """(number of tests run, failures as 'file: tests[i] (name): ...')."""
    from router.config import read_yaml_text

    failures: list[str] = []
    count = 0
    for path in sorted(folder.glob("*.yaml")):
        where = f"{folder.name}/{path.name}"
        try:
            suite = RoutingTestFile.model_validate(read_yaml_text(path.read_text(encoding="utf-8")) or {})
        except ValidationError as exc:
            failures.append(f"{where}: not a routing test file: {_problems(exc)}")
            continue
        except (yaml.YAMLError, ValueError, OSError) as exc:
            failures.append(f"{where}: not a routing test file: {' '.join(str(exc).split())}")
            continue
        for i, test in enumerate(suite.tests):
            count += 1
            label = f"{where}: tests[{i}] ({test.name})"
            try:
                result = dry_route(switchboard, message_from(test.message),
                                   test.at.astimezone(timezone.utc) if test.at else None)
            except ValidationError as exc:
                failures.append(f"{label}: the message is not valid: {_problems(exc)}")
                continue
            except ValueError as exc:
                failures.append(f"{label}: the message is not valid: {str(exc).splitlines()[0]}")
                continue
            actual = {**dataclasses.asdict(result.route), "language": result.labels.get("language"),
                      "urgency": result.labels.get("urgency")}
            wrong = [f"{key} expected {want!r}, got {actual.get(key)!r}"
                     for key, want in test.expect.model_dump(exclude_none=True).items() if actual.get(key) != want]
            if wrong:
                failures.append(f"{label}: {'; '.join(wrong)} — {' '.join(result.route.reasons)}")
    return count, failures

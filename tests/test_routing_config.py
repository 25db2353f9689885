"""Routing configuration is checked before anything starts: every name it uses is defined, hours do not overlap,
every rule can be reached; each problem names its file, key path and reason."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from router.config import ConfigError, load_config
from tests.e2e.servers import EXAMPLE_CONFIG


@pytest.fixture
def deployment(tmp_path) -> Path:
    folder = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, folder)
    return folder


def edit(folder: Path, filename: str, change) -> None:
    path = folder / filename
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def problems_of(folder: Path) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load_config(folder)
    return error.value.problems


def test_the_example_deployment_is_valid():
    config = load_config(EXAMPLE_CONFIG)
    assert {"poster", "tasker", "courier"} <= set(config.lines)
    assert {"billing", "disputes", "safety", "seniors"} <= set(config.teams)
    assert config.sla_policies["courier"].first_response.total_seconds() == 15 * 60
    assert {"en", "it", "ru", "uz"} <= {lang for a in config.agents for lang in a.languages}


def test_unknown_team_calendar_policy_and_skill_are_named_with_file_and_key(deployment):
    def routing(data):
        data["routing"]["rules"][1]["route"]["team"] = "payments"
        data["routing"]["rules"][2]["route"]["required_skills"] = ["forklift"]

    edit(deployment, "routing.yaml", routing)
    edit(deployment, "lines.yaml", lambda d: d["lines"]["poster"].update(calendar="office-paris"))
    edit(deployment, "lines.yaml", lambda d: d["lines"]["tasker"].update(sla_policy="gold"))
    problems = problems_of(deployment)
    joined = "\n".join(problems)
    assert "routing.yaml: routing.rules[1].route.team: unknown team 'payments'" in joined
    assert "routing.yaml: routing.rules[2].route.required_skills" in joined and "'forklift'" in joined
    assert "lines.yaml: lines.poster.calendar: unknown calendar 'office-paris'" in joined
    assert "lines.yaml: lines.tasker.sla_policy: unknown SLA policy 'gold'" in joined


def test_overlapping_hours_are_rejected(deployment):
    edit(deployment, "lines.yaml",
         lambda d: d["calendars"]["office-eu"]["hours"].update({"mon-fri": ["08:00-13:00", "12:30-20:00"]}))
    [problem] = problems_of(deployment)
    assert problem.startswith("lines.yaml: calendars.office-eu.hours") and "overlaps" in problem


def test_a_rule_shadowed_by_an_earlier_one_is_unreachable(deployment):
    def shadow(data):
        rules = data["routing"]["rules"]
        rules.insert(0, {"name": "all-couriers", "when": {"line": "courier"}, "route": {"team": "general"}})

    edit(deployment, "routing.yaml", shadow)
    problems = problems_of(deployment)
    assert any("rule 'courier-payments' can never match: rule 'all-couriers'" in p for p in problems), problems


def test_an_expression_with_an_unknown_name_is_caught_before_start(deployment):
    def expr(data):
        data["routing"]["rules"][5]["when"]["expr"] = "order.total > 100"  # no "order" root: message.order_id

    edit(deployment, "routing.yaml", expr)
    [problem] = problems_of(deployment)
    assert problem.startswith("routing.yaml: routing.rules[5].when.expr") and "order" in problem


def test_an_agent_with_an_unknown_team_or_language_is_rejected(deployment):
    edit(deployment, "agents.yaml", lambda d: d["agents"][0].update(teams=["general", "sales"], languages={"fr": 3}))
    joined = "\n".join(problems_of(deployment))
    assert "agents.yaml: agents[0].teams: unknown team ['sales']" in joined
    assert "agents.yaml: agents[0].languages: unknown language ['fr']" in joined

"""Operators' routing tools from the command line: `route --dry-run`, routing tests in `check`, and `explain`
on a case handled by a real running server."""
from __future__ import annotations

import asyncio
import json
import shutil

import aiohttp
import yaml

from tests.e2e.servers import EXAMPLE_CONFIG, ServerProcess, cli_env, run_cli

SAFETY = {"sender": {"kind": "app", "value": "courier-17"}, "context": {"role": "courier"},
          "text": "I was hit by a car during the delivery, I am injured"}


def test_dry_run_shows_the_route_and_why_without_storing_anything(tmp_path):
    message = tmp_path / "message.json"
    message.write_text(json.dumps(SAFETY), encoding="utf-8")
    data = tmp_path / "data"
    result = run_cli("route", "--dry-run", str(message), "--config", str(EXAMPLE_CONFIG),
                     env=cli_env(SWITCHBOARD_DATA=str(data)))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0] == "line courier  team safety  tier L2  priority 1  SAFETY LANE"
    assert "rule: safety-lane" in out and "because rule 'safety-lane' matched: urgency safety" in out
    assert "skills required: lang:en" in out and "SLA policy: safety" in out
    assert "could take it: nodira, tom" in out  # the safety team at L2, speaking English
    assert not data.exists()  # nothing was opened, let alone written


def test_dry_run_at_a_time_follows_business_hours(tmp_path):
    message = tmp_path / "m.json"
    message.write_text(json.dumps({"sender": {"kind": "app", "value": "p1"}, "context": {"role": "poster"},
                                   "text": "Can I move my booking?"}), encoding="utf-8")
    night = run_cli("route", "--dry-run", str(message), "--at", "2026-11-22T23:30:00+01:00", "--config", "config")
    day = run_cli("route", "--dry-run", str(message), "--at", "2026-11-23T10:00:00+01:00", "--config", "config")
    assert "rule: after-hours-posters" in night.stdout and "line poster  team general  tier L1  priority 4" in night.stdout
    assert "rule: default" in day.stdout and "priority 3" in day.stdout


def test_dry_run_rejects_a_bad_message_file_clearly(tmp_path):
    message = tmp_path / "broken.json"
    message.write_text('{"text": "no sender"', encoding="utf-8")
    result = run_cli("route", "--dry-run", str(message), "--config", "config")
    assert result.returncode == 1 and result.stderr.startswith(f"{message}:"), result.stderr
    message.write_text('{"text": "no sender"}', encoding="utf-8")
    result = run_cli("route", "--dry-run", str(message), "--config", "config")
    assert result.returncode == 1 and "sender" in result.stderr


def test_check_runs_the_routing_tests_and_fails_when_a_rule_change_breaks_one(tmp_path):
    folder = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, folder)
    ok = run_cli("check", "--config", str(folder))
    assert ok.returncode == 0 and "routing tests: 11 passed" in ok.stdout, ok.stdout + ok.stderr
    path = folder / "routing.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["routing"]["rules"][1]["route"]["team"] = "general"  # courier-payments: someone's "small" edit
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    broken = run_cli("check", "--config", str(folder))
    assert broken.returncode == 1
    assert "tests/routing.yaml: tests[1] (an Uzbek courier asking about a payout goes to billing)" in broken.stderr
    assert "team expected 'billing', got 'general'" in broken.stderr


async def test_explain_prints_routing_and_assignment_decisions_of_a_live_case(tmp_path, request):
    server = ServerProcess(EXAMPLE_CONFIG, tmp_path / "data", tmp_path / "logs", log_level=None)
    request.addfinalizer(server.ensure_stopped)
    server.start()
    await server.wait_healthy()
    headers = {"Authorization": "Bearer demo-token"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.put(f"{server.url}/api/v1/agents/nodira/presence", json={"presence": "online"},
                               headers=headers) as response:
            assert response.status == 200, await response.text()
        async with session.post(f"{server.url}/api/v1/messages", json={"external_id": "x1", **SAFETY},
                                headers=headers) as response:
            ref = (await response.json())["case"]["ref"]
        for _ in range(50):  # the assigner works in the background: wait for the offer
            async with session.get(f"{server.url}/api/v1/agents/nodira", headers=headers) as response:
                if (await response.json())["offers"]:
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no offer reached nodira")
    assert server.terminate() == 0
    result = run_cli("explain", ref.lower(), "--config", str(EXAMPLE_CONFIG), "--data", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"{ref}  offered  channel api  line courier  team safety  tier L2  priority 1")
    assert "routed: rule 'safety-lane' matched: urgency safety" in out
    assert "offered to nodira" in out and "[safety lane]" in out
    assert "passed over 1 for offline (e.g. tom)" in out  # tom also qualifies, but is not online
    as_json = json.loads(run_cli("explain", ref, "--json", "--config", "config", "--data", str(tmp_path / "data")).stdout)
    assert [d["type"] for d in as_json["decisions"]][:3] == ["case.created", "case.routed", "assignment.queued"]
    missing = run_cli("explain", "TK-999999", "--config", "config", "--data", str(tmp_path / "data"))
    assert missing.returncode == 1 and "no case TK-999999" in missing.stderr

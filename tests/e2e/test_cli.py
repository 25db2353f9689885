"""The `switchboard` command as an operator uses it: check a configuration, list plugins, run and stop the router."""
from __future__ import annotations

import re
import signal
from pathlib import Path

import aiohttp
import pytest

from router.core.store.base import migrations
from tests.e2e.servers import EXAMPLE_CONFIG, ServerProcess, cli_env, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

# "<file>: <where>: <what to fix>", one problem per line on stderr, indented under a heading.
PROBLEM_LINE = re.compile(r"^\s+(?P<file>[\w.-]+\.yaml): (?P<where>[^:]+): (?P<reason>.+)$")


def problems(stderr: str) -> list[tuple[str, str, str]]:
    return [(m["file"], m["where"], m["reason"]) for m in map(PROBLEM_LINE.match, stderr.splitlines()) if m]


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def plugin_listing(stdout: str) -> dict[str, list[str]]:
    """{plugin name: hooks} from `switchboard plugins` output (a name line, then an indented `hooks:` line)."""
    listing: dict[str, list[str]] = {}
    name = None
    for line in stdout.splitlines():
        if line.strip().startswith("hooks:"):
            assert name is not None, stdout
            listing[name] = [h.strip() for h in line.split("hooks:", 1)[1].split(",") if h.strip()]
        elif line and not line[0].isspace() and not line.startswith("blocked:"):
            name = line.split()[0]
    return listing


# -- help ---------------------------------------------------------------------------------------------------------
def test_help_lists_the_commands_and_run_help_lists_its_options():
    """`switchboard --help` and `switchboard run --help` answer, so an operator can find their way."""
    top = run_cli("--help")
    assert top.returncode == 0, top.stderr
    for command in ("run", "check", "plugins"):
        assert re.search(rf"^\s+{command}\s", top.stdout, re.M), top.stdout
    run = run_cli("run", "--help")
    assert run.returncode == 0, run.stderr
    for option in ("--config", "--data", "--host", "--port", "--log-level"):
        assert option in run.stdout


# -- check ----------------------------------------------------------------------------------------------------------
def test_check_accepts_the_example_configuration():
    """The shipped example passes `switchboard check`, which says which file it read."""
    result = run_cli("check", "--config", "config")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config: OK"), result.stdout
    assert "switchboard.yaml" in result.stdout
    assert "integrations: marketplace" in result.stdout
    assert result.stderr == ""


BROKEN = {
    "unknown key": (
        {"switchboard.yaml": "instance:\n  name: Shop\n  nmae: Typo\n"},
        [("switchboard.yaml", "instance.nmae", "unknown key")],
    ),
    "bad duration": (
        {"switchboard.yaml": "threading:\n  reopen_window: soon\n"},
        [("switchboard.yaml", "threading.reopen_window", "not a duration: 'soon'")],
    ),
    "secret from an unset variable": (
        {"switchboard.yaml": "integrations:\n  - name: shop\n    token: {$env: SB_E2E_SURELY_UNSET}\n"},
        [("switchboard.yaml", "integrations[0].token", "environment variable SB_E2E_SURELY_UNSET is not set")],
    ),
    "invalid YAML": (
        {"switchboard.yaml": "instance:\n  name: [unclosed\n"},
        [("switchboard.yaml", "line 3, column 1", "not valid YAML")],
    ),
    "problems in two files": (
        {"switchboard.yaml": "instance:\n  case_ref_prefix: tk\n", "threading.yaml": "threading:\n  reopen_window: 3 weeks\n"},
        [("switchboard.yaml", "instance.case_ref_prefix", "String should match pattern"),
         ("threading.yaml", "threading.reopen_window", "not a duration: '3 weeks'")],
    ),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_check_names_file_key_and_reason_for_each_problem(case, tmp_path):
    """A broken configuration folder makes `switchboard check` exit 1 and say, per problem, which file, which key
    and what is wrong, so the operator can go straight to the line."""
    files, expected = BROKEN[case]
    directory = write(tmp_path / "config", files)
    result = run_cli("check", "--config", str(directory))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == f"configuration problems in {directory}:"
    found = problems(result.stderr)
    assert len(found) == len(result.stderr.splitlines()) - 1, f"a line is not <file>: <key>: <reason>:\n{result.stderr}"
    assert len(found) == len(expected), result.stderr
    for file, where, reason in expected:
        assert any(f == file and w == where and reason in r for f, w, r in found), (file, where, reason, found)
    assert "Traceback" not in result.stderr


SECRETS = {
    "SB_E2E_SECRET_TOKEN": "tok-9f8e7d6c5b4a",
    "SB_E2E_SECRET_WEBHOOK": "whsec-1a2b3c4d5e6f",
    "SB_E2E_SECRET_DSN": "postgresql://switchboard:pw-0xDEADBEEF@127.0.0.1:5432/switchboard",
}
SECRET_CONFIG = """\
store:
  backend: postgres
  postgres:
    dsn: {$env: SB_E2E_SECRET_DSN}
integrations:
  - name: shop
    token: {$env: SB_E2E_SECRET_TOKEN}
    scopes: [ingest, read]
    webhook: {url: "https://shop.example.com/hook", secret: {$env: SB_E2E_SECRET_WEBHOOK}}
  - name: partner
    token: {$env: SB_E2E_UNSET_BUT_DEFAULTED, default: default-tok-31337}
"""


def test_secret_values_never_appear_in_check_or_plugins_output(tmp_path):
    """Tokens, webhook secrets and DSN passwords never show up in what `check` and `plugins` print, whether the
    configuration is valid, broken elsewhere, or has a secret pasted in literally by mistake (CI logs are public)."""
    env = cli_env(**SECRETS)
    valid = write(tmp_path / "valid", {"switchboard.yaml": SECRET_CONFIG})
    broken = write(tmp_path / "broken", {"switchboard.yaml": SECRET_CONFIG + "threading: {reopen_window: never}\n"})
    pasted = write(tmp_path / "pasted", {"switchboard.yaml": SECRET_CONFIG.replace(
        "{$env: SB_E2E_SECRET_TOKEN}", SECRETS["SB_E2E_SECRET_TOKEN"]).replace(
        "{$env: SB_E2E_SECRET_DSN}", f"\"{SECRETS['SB_E2E_SECRET_DSN']}\"")})
    runs = {
        "check valid": (run_cli("check", "--config", str(valid), env=env), 0),
        "plugins valid": (run_cli("plugins", "--config", str(valid), env=env), 0),
        "check broken": (run_cli("check", "--config", str(broken), env=env), 1),
        "plugins broken": (run_cli("plugins", "--config", str(broken), env=env), 1),
        "check pasted": (run_cli("check", "--config", str(pasted), env=env), 1),
    }
    for name, (result, code) in runs.items():
        assert result.returncode == code, (name, result.stdout, result.stderr)
        output = result.stdout + result.stderr
        for secret in [*SECRETS.values(), "pw-0xDEADBEEF", "default-tok-31337"]:
            assert secret not in output, f"{name} printed a secret:\n{output}"
    assert "store: postgres" in runs["check valid"][0].stdout and "integrations: shop, partner" in runs["check valid"][0].stdout
    pasted_problems = problems(runs["check pasted"][0].stderr)
    assert {w for _, w, _ in pasted_problems} == {"store.postgres.dsn", "integrations[0].token"}
    assert all("environment" in r for _, _, r in pasted_problems)


# -- plugins --------------------------------------------------------------------------------------------------------
def test_plugins_lists_the_builtins_and_their_hooks():
    """`switchboard plugins` shows what will run: the routing, assignment and CSAT defaults, the API and email
    channels."""
    result = run_cli("plugins", "--config", "config")
    assert result.returncode == 0, result.stderr
    listing = plugin_listing(result.stdout)
    assert listing == {
        "api": ["deliver", "register_channels", "shutdown", "startup", "web_routes"],
        "core.assignment": ["case_event", "choose_agent", "scheduled_jobs", "shutdown", "startup"],
        "core.csat": ["case_event"],
        "core.routing": ["classify", "select_route", "startup"],
        "email": ["configure", "deliver", "register_channels", "reparse", "scheduled_jobs", "shutdown", "startup",
                  "web_routes"],
    }, result.stdout
    assert "blocked:" not in result.stdout


def test_blocking_the_api_plugin_removes_it_and_says_so():
    """SWITCHBOARD_BLOCK_PLUGINS=api takes the API channel out, and the listing says it is blocked."""
    result = run_cli("plugins", "--config", "config", env=cli_env(SWITCHBOARD_BLOCK_PLUGINS="api"))
    assert result.returncode == 0, result.stderr
    assert set(plugin_listing(result.stdout)) == {"core.routing", "core.assignment", "core.csat", "email"}
    assert result.stdout.splitlines()[-1] == "blocked: api"


@pytest.mark.parametrize("how", ["environment", "config"])
@pytest.mark.parametrize("command", ["plugins", "check"])
def test_blocking_a_core_plugin_is_refused_with_a_clear_message(command, how, tmp_path):
    """The core cannot run without default routing: blocking core.routing (by variable or in the config file)
    stops the command with exit 1 and a sentence naming the plugin, not a traceback."""
    if how == "environment":
        config, env = "config", cli_env(SWITCHBOARD_BLOCK_PLUGINS="core.routing")
    else:
        text = (EXAMPLE_CONFIG / "switchboard.yaml").read_text().replace("blocked_plugins: []",
                                                                        "blocked_plugins: [core.routing]")
        config, env = str(write(tmp_path / "config", {"switchboard.yaml": text})), cli_env()
    result = run_cli(command, "--config", config, env=env)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "cannot start: plugins ['core.routing'] are part of the core and cannot be blocked"
    ), result.stderr


# -- run ------------------------------------------------------------------------------------------------------------
async def test_run_serves_the_example_configuration_and_stops_cleanly_on_sigterm(tmp_path, request):
    """`switchboard run` on the example configuration answers /healthz, takes a message with the demo token
    (202 with a TK- case reference) and, on SIGTERM (what systemd or Docker sends), exits 0 without errors."""
    server = ServerProcess(EXAMPLE_CONFIG, tmp_path / "data", tmp_path / "logs", log_level=None)
    request.addfinalizer(server.ensure_stopped)
    server.start()
    assert await server.wait_healthy() == {"status": "ok", "store": "sqlite", "schema_version": len(migrations("sqlite"))}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        body = {"external_id": "order-42-msg-1", "sender": {"kind": "phone", "value": "333 123 4567"},
                "text": "The courier left my parcel at the wrong door"}
        async with session.post(f"{server.url}/api/v1/messages", json=body) as response:
            assert response.status == 401  # no token, no entry
        headers = {"Authorization": "Bearer demo-token"}
        async with session.post(f"{server.url}/api/v1/messages", json=body, headers=headers) as response:
            answer = await response.json()
            assert response.status == 202, answer
        assert answer["outcome"] == "created" and answer["case"]["ref"].startswith("TK-"), answer
        async with session.get(f"{server.url}/api/v1/cases/{answer['case']['ref']}", headers=headers) as response:
            case = await response.json()
            assert response.status == 200, case
        assert case["customer"]["identities"] == ["phone:+393331234567"]  # default_region IT
        assert [m["text"] for m in case["messages"]] == [body["text"]]

    assert server.terminate() == 0, server.describe()  # SIGTERM is a graceful exit, not death by signal
    assert server.proc is not None and server.proc.returncode != -signal.SIGTERM
    assert (tmp_path / "data" / "switchboard.db").is_file()
    out, err = server.stdout(), server.stderr()
    assert f"on http://127.0.0.1:{server.port}" in out and "integration marketplace" in out, out
    assert "demo-token" not in out + err
    for bad in ("Traceback", "ERROR", "CRITICAL", "Unclosed", "was destroyed", "never awaited", "Exception"):
        assert bad not in err, f"{bad!r} in stderr:\n{err}"


# -- accounts -------------------------------------------------------------------------------------------------------
async def test_accounts_made_with_the_cli_sign_in_on_the_running_server(tmp_path, request):
    """An operator adds a supervisor with `switchboard accounts add` while the server runs; she signs in over
    HTTP with that password, a token from `accounts token` works, a changed password ends her sessions, and a
    disabled account is refused. The demo accounts of the example configuration sign in too."""
    import subprocess

    from tests.e2e.servers import switchboard_command

    data = tmp_path / "data"
    server = ServerProcess(EXAMPLE_CONFIG, data, tmp_path / "logs", log_level=None)
    request.addfinalizer(server.ensure_stopped)
    server.start()
    await server.wait_healthy()
    env = cli_env()

    def accounts(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*switchboard_command(), "accounts", *args, "--config", str(EXAMPLE_CONFIG),
                               "--data", str(data)] + (["--password-stdin"] if password is not None else []),
                              input=f"{password}\n" if password is not None else None, env=env,
                              capture_output=True, text=True, timeout=30)

    added = accounts("add", "pia", "--role", "supervisor", "--line", "poster", "--name", "Pia Neri",
                     password="pia-secret-1")
    assert added.returncode == 0 and "added supervisor pia" in added.stdout, added.stderr
    again = accounts("add", "pia", "--role", "agent", password="x" * 10)
    assert again.returncode == 1 and "exists" in again.stderr
    stray = accounts("add", "zoe", "--role", "agent", password="zoe-secret-1")
    assert stray.returncode == 1 and "no agent 'zoe'" in stray.stderr
    short = accounts("add", "ivo", "--role", "supervisor", password="short")
    assert short.returncode == 1 and "8 characters" in short.stderr
    token = accounts("token", "pia", "--name", "laptop").stdout.strip()
    assert token.startswith("sbp_")
    listing = accounts("list").stdout
    assert re.search(r"^pia\s+supervisor\s+agent=-\s+scope=poster\s+active\s+tokens=1 source=cli", listing, re.M), listing
    assert re.search(r"^giulia\s+agent\s+agent=giulia", listing, re.M)  # seeded from accounts.yaml

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async def login(account, password):
            async with session.post(f"{server.url}/api/v1/auth/login",
                                    json={"account": account, "password": password, "token": True}) as response:
                return response.status, await response.json()

        status, body = await login("pia", "pia-secret-1")
        assert status == 200 and body["account"]["lines"] == ["poster"]
        session_token = body["token"]
        assert (await login("giulia", "switchboard-demo"))[0] == 200
        async with session.get(f"{server.url}/api/v1/supervisor/overview",
                               headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200
        assert accounts("passwd", "pia", password="pia-secret-2").returncode == 0
        assert (await login("pia", "pia-secret-1"))[0] == 401
        assert (await login("pia", "pia-secret-2"))[0] == 200
        fresh = accounts("token", "pia").stdout.strip()
        assert accounts("disable", "pia").returncode == 0
        # A token the server has not checked before is looked up in the store at once: refused.
        async with session.get(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {fresh}"}) as r:
            assert r.status == 401
        assert (await login("pia", "pia-secret-2"))[0] == 401
        async with session.get(f"{server.url}/api/v1/me",
                               headers={"Authorization": f"Bearer {session_token}"}) as r:
            assert r.status == 401  # the session from before the password change was revoked with it
    assert server.terminate() == 0, server.describe()


# -- what goes wrong around the server: a clear line, never a traceback -------------------------------------------
def test_run_on_a_port_in_use_or_a_corrupt_database_says_so_in_one_line(tmp_path):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli("run", "--config", "config", "--data", str(tmp_path / "data"), "--port", str(port))
    assert busy.returncode == 1 and "Traceback" not in busy.stderr, busy.stderr
    assert "address already in use" in busy.stderr.lower(), busy.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "switchboard.db").write_bytes(b"this is not a database" * 100)
    corrupt = run_cli("explain", "TK-1001", "--config", "config", "--data", str(tmp_path / "bad"))
    assert corrupt.returncode == 1 and "Traceback" not in corrupt.stderr, corrupt.stderr
    assert "SQLite database cannot be used" in corrupt.stderr, corrupt.stderr
    wrong = run_cli("run", "--config", "config", "--port", "70000")
    assert wrong.returncode == 2 and "'70000' is not a port" in wrong.stderr


def test_check_warns_of_demo_secrets_and_unloaded_channels(tmp_path):
    result = run_cli("check", "--config", "config")
    assert result.returncode == 0, result.stderr
    assert "warning: $SWITCHBOARD_DEMO_TOKEN is not set" in result.stdout
    assert "warning: channel 'sms' is named but not loaded" in result.stdout
    with_env = run_cli("check", "--config", "config", env=cli_env(SWITCHBOARD_DEMO_TOKEN="a-real-one",
                                                                   SWITCHBOARD_DEMO_PASSWORD="a-real-password"))
    assert "is not set" not in with_env.stdout, with_env.stdout


def test_accounts_add_refuses_unknown_lines_teams_and_bad_ids(tmp_path):
    data = str(tmp_path / "data")
    for args, expected in [(["pia", "--role", "supervisor", "--line", "postr"], "no line 'postr'"),
                           (["pia", "--role", "supervisor", "--team", "nope"], "no team 'nope'"),
                           (["Bad_ID", "--role", "supervisor"], "'Bad_ID' is not an account id")]:
        result = run_cli("accounts", "add", *args, "--config", "config", "--data", data,
                         env=cli_env(SWITCHBOARD_PASSWORD="long enough pass"))
        assert result.returncode == 1 and expected in result.stderr, (args, result.stdout, result.stderr)

"""The `switchboard` command: run a deployment, check its configuration, list its plugins, manage accounts."""
from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import sqlite3
import sys
from pathlib import Path

from router import __version__
from router.channels import StartupError
from router.config import ConfigError, defaulted_secrets, load_config, unknown_channels
from router.core.store.base import StoreUnavailable

DEFAULT_CONFIG = os.environ.get("SWITCHBOARD_CONFIG", "config")
DEFAULT_DATA = os.environ.get("SWITCHBOARD_DATA", "data")
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard",
        description="Switchboard routes customer messages from every channel into cases and on to the right agents.",
        epilog="Each command takes --config DIR (default: $SWITCHBOARD_CONFIG or ./config). "
        "Docs: docs/configuration.md (operators), docs/hooks.md (plugin authors), docs/api.md (HTTP API).",
    )
    parser.add_argument("--version", action="version", version=f"switchboard {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", default=DEFAULT_CONFIG, metavar="DIR", help="configuration folder")
        return p

    run = with_config(commands.add_parser(
        "run", help="start the router (HTTP API, webhooks, scheduler)",
        description="Start Switchboard: opens the store (SQLite under --data by default), mounts every plugin's "
        "routes and jobs, and serves HTTP until interrupted.",
    ))
    run.add_argument("--data", "-d", default=DEFAULT_DATA, metavar="DIR", help="where the embedded database lives")
    run.add_argument("--host", help="listen address (default: server.host in the config)")
    run.add_argument("--port", type=_port, help="listen port (default: server.port in the config)")
    run.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                     help="default: $SWITCHBOARD_LOG or INFO")

    with_config(commands.add_parser(
        "check", help="validate a configuration folder",
        description="Load and validate every YAML file of a configuration folder, the plugins' sections included. "
        "Exits 1 and names file, key and fix for each problem.",
    ))
    route = with_config(commands.add_parser(
        "route", help="show where a message would go, without touching any state",
        description="Classify and route a message (a JSON file in the shape of an inbound message; channel and "
        "external_id may be left out) against the configuration, and print the route and why. Nothing is stored.",
    ))
    route.add_argument("--dry-run", action="store_true", required=True,
                       help="required: routing here never changes anything")
    route.add_argument("message", metavar="MESSAGE.json", help="the message, or - for standard input")
    route.add_argument("--at", metavar="ISO-TIME", help="route as if it were this time (business hours)")

    explain = with_config(commands.add_parser(
        "explain", help="show why a case went where it went",
        description="Print a case's routing decision (rule and reasons) and every assignment decision since: each "
        "offer with its candidates and the agents passed over and why, declines, timeouts, escalations and SLA "
        "events. Reads the store of the deployment (--data for embedded SQLite, or store: in the config).",
    ))
    explain.add_argument("ref", metavar="CASE-REF", help="the case reference, e.g. TK-1001")
    explain.add_argument("--data", "-d", default=DEFAULT_DATA, metavar="DIR", help="where the embedded database lives")
    explain.add_argument("--json", action="store_true", help="print the explanation as JSON")

    quarantine = with_config(commands.add_parser(
        "quarantine", help="list, show or reprocess messages a channel could not take",
        description="Talks to the running server's HTTP API (GET /api/v1/quarantine, POST .../reprocess), so a "
        "reprocessed message is routed and assigned like any other. The token needs the read scope to list and "
        "show, supervise to reprocess.",
    ))
    quarantine.add_argument("action", choices=["list", "show", "reprocess"])
    quarantine.add_argument("id", nargs="?", type=int, help="the quarantine entry (show, reprocess)")
    quarantine.add_argument("--server", help="base URL (default: http://server.host:server.port of the config)")
    quarantine.add_argument("--token", default=os.environ.get("SWITCHBOARD_TOKEN"),
                            help="an integration token (default: $SWITCHBOARD_TOKEN)")
    quarantine.add_argument("--all", action="store_true", help="list reprocessed entries too")
    accounts = with_config(commands.add_parser(
        "accounts", help="people who sign in: list, add, set passwords, issue and revoke tokens",
        description="Manage agents', supervisors' and admins' accounts in the deployment's store (--data for "
        "embedded SQLite, or store: in the config). Passwords are read without echo, or from standard input with "
        "--password-stdin; a token is printed once and only its hash is kept.",
    ))
    accounts.add_argument("action", choices=["list", "add", "passwd", "token", "revoke", "disable", "enable"])
    accounts.add_argument("id", nargs="?", help="the account (all actions but list)")
    accounts.add_argument("--data", "-d", default=DEFAULT_DATA, metavar="DIR", help="where the embedded database lives")
    accounts.add_argument("--name", help="full name (add); a label for the token (token)")
    accounts.add_argument("--role", choices=["agent", "supervisor", "admin"], default="agent")
    accounts.add_argument("--agent", help="the agent (agents.yaml) this person works as; default: the id for agents")
    accounts.add_argument("--line", action="append", default=[], help="a supervisor's line (repeatable)")
    accounts.add_argument("--team", action="append", default=[], help="a supervisor's team (repeatable)")
    accounts.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    with_config(commands.add_parser(
        "plugins", help="list loaded plugins, their versions and hooks",
        description="List every plugin Switchboard would load with this configuration: built-ins first, then "
        "third-party plugins from the 'switchboard' entry-point group, with the hooks each implements.",
    ))
    return parser


def cmd_check(args: argparse.Namespace) -> int:
    from router.app import Switchboard

    config = load_config(args.config)
    sb = Switchboard(config, data_dir=DEFAULT_DATA)  # runs every plugin's configure and channel registration
    from router.core.dryrun import run_routing_tests

    files = sorted(set(config._sources.values()))
    tests_dir = Path(args.config) / "tests"
    count, failures = run_routing_tests(sb, tests_dir) if tests_dir.is_dir() else (0, [])
    if failures:
        print(f"{args.config}: {len(failures)} of {count} routing tests failed:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    print(f"{args.config}: OK ({len(files)} file{'s' * (len(files) != 1)}: {', '.join(files)})")
    print(f"  store: {config.store.backend}; channels: {', '.join(sb.channels.names())}; "
          f"integrations: {', '.join(i.name for i in config.integrations) or 'none'}")
    print(f"  lines: {len(config.lines)}, teams: {len(config.teams)}, rules: {len(config.routing.rules)}, "
          f"agents: {len(config.agents)}; routing tests: {count} passed")
    for env in defaulted_secrets(config):
        print(f"  warning: ${env} is not set: its default in the configuration will be used")
    for name, places in unknown_channels(config, set(sb.channels.names())).items():
        more = f" and {len(places) - 1} more" if len(places) > 1 else ""
        print(f"  warning: channel {name!r} is named but not loaded (a typo, or its plugin is not installed): "
              f"{places[0]}{more}")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    import json
    from datetime import datetime, timezone

    from pydantic import ValidationError

    from router.app import Switchboard
    from router.core.dispatcher import InvalidInbound
    from router.core.dryrun import dry_route, message_from, qualified_agents

    config = load_config(args.config)
    sb = Switchboard(config, data_dir=DEFAULT_DATA)
    raw = sys.stdin.read() if args.message == "-" else Path(args.message).read_text(encoding="utf-8")
    try:
        message = message_from(json.loads(raw))
        at = datetime.fromisoformat(args.at).astimezone(timezone.utc) if args.at else None
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "message"
            print(f"{args.message}: {where}: {error['msg']}", file=sys.stderr)
        return 1
    except ValueError as exc:  # JSON and time errors
        print(f"{args.message}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    try:
        result = dry_route(sb, message, at)
    except InvalidInbound as exc:  # e.g. a phone number that is not one, a channel nobody registered
        print(f"{args.message}: {exc}", file=sys.stderr)
        return 1
    route = result.route
    print(f"line {route.line or '-'}  team {route.team or '-'}  tier {route.tier}  priority {route.priority}"
          f"{'  SAFETY LANE' if route.safety_lane else ''}")
    print(f"rule: {route.rule}")
    for reason in route.reasons:
        print(f"  because {reason}")
    print(f"labels: {json.dumps(result.labels, ensure_ascii=False)}")
    print(f"skills required: {', '.join(route.required_skills) or 'none'}; "
          f"preferred: {', '.join(route.preferred_skills) or 'none'}")
    print(f"SLA policy: {route.sla_policy or 'none'}; escalation: {route.escalation or 'none'}")
    agents = qualified_agents(config, route)
    if agents:
        print(f"could take it: {', '.join(agents)}")
    else:
        wider = qualified_agents(config, route, drop_preferred=True) if route.preferred_skills else []
        print("could take it: nobody in the configuration has these skills"
              + (f"; once preferred skills are dropped: {', '.join(wider)}" if wider else ""))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import json

    from router.core.explain import explain_case, format_explanation

    config = load_config(args.config)
    ok, found = _on_store(config, Path(args.data), lambda store: explain_case(store, args.ref.strip().upper()))
    if not ok:
        return 1
    if found is None:
        print(f"no case {args.ref.upper()}", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2, ensure_ascii=False) if args.json else format_explanation(found))
    return 0


def _on_store(config, data_dir: Path, work, *, create: bool = False):
    """Run `work(store)` on the deployment's store: (True, its result), or (False, None) after saying why not."""
    import asyncio

    from router.core.store import make_store
    from router.core.store.base import StoreUnavailable

    if config.store.backend == "sqlite" and not create and not (data_dir / config.store.sqlite.path).exists():
        print(f"no database at {data_dir / config.store.sqlite.path}; pass --data DIR of the deployment",
              file=sys.stderr)
        return False, None

    async def run():
        store = make_store(config, data_dir)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return True, asyncio.run(run())
    except StoreUnavailable as exc:
        print(f"cannot use the store: {exc}", file=sys.stderr)
        return False, None


def _password(args: argparse.Namespace) -> str:
    import getpass

    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.id}: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("the two passwords differ; nothing changed")
    return first


def cmd_accounts(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from router.core import accounts as acc

    config = load_config(args.config)
    data_dir = Path(args.data)
    now = datetime.now(timezone.utc)
    if args.action != "list" and not args.id:
        print(f"accounts {args.action} needs the account id", file=sys.stderr)
        return 2

    async def work(store):
        if args.action == "list":
            return [(row, len([t for t in await store.read(lambda tx, i=row["id"]: tx.tokens_of(i))
                               if t["revoked_at"] is None])) for row in await store.read(lambda tx: tx.accounts())]
        row = await store.read(lambda tx: tx.account(args.id))
        if args.action == "add":
            if row is not None:
                raise acc.AccountError(409, "conflict", f"account {args.id!r} exists; use passwd to change its password")
            problems = [f"no line {name!r} (lines: {', '.join(config.lines)})" for name in args.line or ()
                        if name not in config.lines]
            problems += [f"no team {name!r} (teams: {', '.join(config.teams)})" for name in args.team or ()
                         if name not in config.teams]
            if not re.fullmatch(r"[a-z0-9][a-z0-9_.@-]*", args.id) or len(args.id) > 128:
                problems.append(f"{args.id!r} is not an account id: lower-case letters, digits and _ . @ -")
            if problems:
                raise acc.AccountError(400, "bad_request", "; ".join(problems))
            agent = args.agent or (args.id if args.role == "agent" else None)
            if agent is not None and agent not in {a.id for a in config.agents} and agent not in {
                    r["id"] for r in await store.read(lambda tx: tx.agents())}:
                raise acc.AccountError(400, "bad_request", f"no agent {agent!r}; an agent account works as an agent "
                                                           "of agents.yaml (or one added through the API)")
            await acc.put_account(store, args.id, name=args.name or args.id, role=args.role, agent_id=agent,
                                  lines=args.line, teams=args.team, password=_password(args), at=now)
            return f"added {args.role} {args.id}" + (f" (works as agent {agent})" if agent else "")
        if row is None:
            raise acc.AccountError(404, "not_found", f"no account {args.id!r}")
        if args.action == "passwd":
            await acc.put_account(store, args.id, name=row["name"], role=row["role"], agent_id=row["agent_id"],
                                  lines=row["lines"], teams=row["teams"], password=_password(args), at=now)
            revoked = await store.write(lambda tx: tx.revoke_token(account_id=args.id, at=now))
            return f"password of {args.id} changed; {revoked} token(s) and session(s) revoked"
        if args.action == "token":
            token = acc.TOKEN_PREFIX["api"] + __import__("secrets").token_urlsafe(32)
            await store.write(lambda tx: tx.insert_token(args.id, "api", args.name, acc.token_digest(token), now, None))
            return token
        if args.action == "revoke":
            revoked = await store.write(lambda tx: tx.revoke_token(account_id=args.id, at=now))
            return f"{revoked} token(s) and session(s) of {args.id} revoked"
        await store.write(lambda tx: tx.set_account_disabled(args.id, now if args.action == "disable" else None,
                                                             source="cli"))
        return f"{args.id} {args.action}d"

    try:
        ok, result = _on_store(config, data_dir, work, create=args.action == "add")
    except acc.AccountError as exc:
        print(exc.detail, file=sys.stderr)
        return 1
    if not ok:
        return 1
    if args.action == "list":
        for row, tokens in result:
            state = "disabled" if row["disabled_at"] else "active"
            scope = ",".join(row["lines"] + row["teams"]) or "-"
            print(f"{row['id']:<20} {row['role']:<10} agent={row['agent_id'] or '-':<12} scope={scope:<20} "
                  f"{state:<8} tokens={tokens} source={row['source']}  {row['name']}")
    else:
        print(result)
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.request

    if args.action != "list" and args.id is None:
        print(f"switchboard quarantine {args.action} needs the entry's id", file=sys.stderr)
        return 2
    if not args.token:
        print("give an integration token with --token or $SWITCHBOARD_TOKEN", file=sys.stderr)
        return 2
    server = args.server
    if not server:
        config = load_config(args.config)
        server = f"http://{config.server.host}:{config.server.port}"
    path = {"list": "/api/v1/quarantine" + ("?status=all" if args.all else ""),
            "show": f"/api/v1/quarantine/{args.id}", "reprocess": f"/api/v1/quarantine/{args.id}/reprocess"}
    request = urllib.request.Request(server.rstrip("/") + path[args.action],
                                     method="POST" if args.action == "reprocess" else "GET",
                                     headers={"Authorization": f"Bearer {args.token}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    except (urllib.error.URLError, OSError) as exc:
        print(f"cannot reach Switchboard at {server}: {exc}; is it running (switchboard run)?", file=sys.stderr)
        return 1
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        print(f"{server} answered {status} with something that is not Switchboard's JSON: {raw[:200]!r}",
              file=sys.stderr)
        return 1
    if not isinstance(body, dict):
        body = {"detail": body}
    if args.action == "list" and status != 200:
        print(f"{status}: {body.get('detail') or body}", file=sys.stderr)
        return 1
    if args.action == "list":
        items = body.get("quarantine", [])
        for item in items:
            print(f"{item['id']:>6}  {item['status']:<11} {item['channel']:<8} {item['account']:<30} {item['reason']}")
        print(f"{len(items)} entr{'y' if len(items) == 1 else 'ies'}")
        return 0 if status == 200 else 1
    if status >= 400 and "reason" not in body:
        print(f"{status}: {body.get('detail') or body}", file=sys.stderr)
        return 1
    if args.action == "show":
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return 0
    if body.get("status") == "reprocessed":
        print(f"entry {args.id} reprocessed into case {body.get('case_ref')}")
        return 0
    print(f"entry {args.id} is still held: {body.get('reason')}", file=sys.stderr)
    return 1


def cmd_plugins(args: argparse.Namespace) -> int:
    from router.plugins import build_plugin_manager, describe_plugins

    config = load_config(args.config)
    pm = build_plugin_manager(config.blocked_plugins)
    rows = describe_plugins(pm)
    width = max(len(r.name) for r in rows)
    for row in rows:
        print(f"{row.name:<{width}}  {row.version:<10} {row.source}")
        print(f"{'':<{width}}  hooks: {', '.join(h.removeprefix('switchboard_') for h in row.hooks)}")
    blocked = sorted(name for name, plugin in pm.list_name_plugin() if plugin is None)
    if blocked:
        print(f"blocked: {', '.join(blocked)}")
    return 0


async def _freeze_startup_heap(_app) -> None:
    """Move what start-up built (configuration, compiled rules, plugins, the language model, the workforce: about
    80,000 objects that live as long as the process) out of the garbage collector's sight. A full collection
    walks every tracked object and stalls the event loop while it does; without these it walks only what was
    made since. Measured with benchmarks/offers.py: p99 70-112 ms before, 31-58 ms after."""
    gc.collect()
    gc.freeze()


def cmd_run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from router.app import Switchboard
    from router.web.app import create_app

    level = args.log_level or os.environ.get("SWITCHBOARD_LOG", "INFO").upper()
    if level not in LOG_LEVELS:
        print(f"SWITCHBOARD_LOG={level!r} is not one of {', '.join(LOG_LEVELS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # not two lines a second for the assignment tick
    config = load_config(args.config)
    data_dir = Path(args.data)
    sb = Switchboard(config, data_dir=data_dir)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    where = f"SQLite at {data_dir / config.store.sqlite.path}" if config.store.backend == "sqlite" else "PostgreSQL"

    def banner(_text: str) -> None:
        print(f"Switchboard {__version__} on http://{host}:{port} ({where})", flush=True)
        print(f"  channels: {', '.join(sb.channels.names())}", flush=True)
        for integration in config.integrations:
            print(f"  integration {integration.name}: token from ${integration.token.env}, "
                  f"scopes {', '.join(integration.scopes)}", flush=True)
        if config.accounts:
            print(f"  console: http://{host}:{port}/console ({len(config.accounts)} accounts in the configuration; "
                  "switchboard accounts list shows all)", flush=True)
        for env in defaulted_secrets(config):
            print(f"  warning: ${env} is not set: the configuration's default is in use (fine for a demo, "
                  "not for production)", flush=True)
        missing = list(unknown_channels(config, set(sb.channels.names())))
        if missing:
            print(f"  note: the configuration names channels that are not loaded: {', '.join(missing)} "
                  "(switchboard check says where)", flush=True)
        print("  POST /api/v1/messages to open a case; Ctrl+C to stop", flush=True)

    app = create_app(sb)
    app.on_startup.append(_freeze_startup_heap)  # after the lifecycle's start: everything start-up built is in it
    web.run_app(app, host=host, port=port, print=banner, access_log=None,
                handle_signals=True, shutdown_timeout=10)
    return 0


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"run": cmd_run, "check": cmd_check, "plugins": cmd_plugins, "route": cmd_route,
               "explain": cmd_explain, "quarantine": cmd_quarantine, "accounts": cmd_accounts}[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"configuration problems in {getattr(args, 'config', '?')}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except StartupError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"the store is unavailable: {exc}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as exc:
        print(f"the SQLite database cannot be used: {exc} (is it a Switchboard database, and intact?)",
              file=sys.stderr)
        return 1
    except OSError as exc:  # a port in use, an unknown host, a folder that cannot be written...
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{args.command}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

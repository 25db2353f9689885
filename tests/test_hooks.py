"""One test per hook, each through the behaviour a plugin author relies on, plus a meta-test that keeps it so."""
from __future__ import annotations

import asyncio
import inspect
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiohttp import web

from router import hookimpl, hookspecs
from router.channels import Channel, ScheduledJob, StartupError
from router.config import ConfigError
from router.core.assigner import ASSIGNER
from router.core.model import DeliveryResult, OutboundStatus, Route
from router.core.store.base import migrations
from router.core.workforce import AgentState
from tests.conftest import auth, make_config
from tests.core.test_assignment import agent as assignment_agent
from tests.core.test_assignment import sections as assignment_sections

EMAIL = {"kind": "email", "value": "anna@example.com"}
ROOT = Path(__file__).resolve().parents[1]


def test_every_hook_is_tested_and_documented():
    hooks = sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
                   if name.startswith("switchboard_"))
    tested = {name.removeprefix("test_hook_") for name in globals() if name.startswith("test_hook_")}
    assert sorted(set(hooks) - tested) == [], "hooks without a test_hook_<name> test"
    docs = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    assert [h for h in hooks if h not in docs] == [], "hooks missing from docs/hooks.md"
    for name in hooks:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring contract"


async def test_hook_switchboard_configure(harness_factory):
    class Strict:
        name = "strict"  # its entry point's name: the config section plugins.strict is its own

        @hookimpl
        def switchboard_configure(self, config):
            section = config.plugins.get("strict", {})
            if "api_key" not in section:
                raise ConfigError(["switchboard.yaml: plugins.strict.api_key: required; set it to {$env: NAME}"])

    with pytest.raises(ConfigError, match="plugins.strict.api_key"):
        await harness_factory(make_config(), plugins=(Strict(),))
    h = await harness_factory(make_config(plugins={"strict": {"api_key": "x"}}), plugins=(Strict(),))
    assert h.sb.started
    with pytest.raises(ConfigError, match="plugins.strikt: no plugin named 'strikt' is installed"):
        await harness_factory(make_config(plugins={"strict": {"api_key": "x"}, "strikt": {}}), plugins=(Strict(),))


async def test_hook_switchboard_register_channels(harness_factory):
    class Chat:
        @hookimpl
        def switchboard_register_channels(self, registry, config):
            registry.add(Channel(name="chat", title="Web chat", identity_kind="app"))

    h = await harness_factory(plugins=(Chat(),))
    assert h.sb.channels.names() == ["api", "chat", "email"]
    result = await h.ingest(channel="chat", account="widget", external_id="c1",
                            sender={"kind": "app", "value": "u1"}, text="hi")
    assert result.case.channel == "chat"

    class Impostor:
        @hookimpl
        def switchboard_register_channels(self, registry):
            registry.add(Channel(name="api", title="Another API"))

    with pytest.raises(StartupError, match="'api' is registered twice"):
        await harness_factory(plugins=(Impostor(),))


async def test_hook_switchboard_web_routes(http_factory):
    class Status:
        @hookimpl
        def switchboard_web_routes(self, switchboard):
            async def handler(request):
                return web.json_response({"channels": switchboard.channels.names()})

            return [web.get("/channels/status/ping", handler), web.static("/channels/status/widget", ROOT / "docs")]

    h = await http_factory(plugins=(Status(),))
    response = await h.client.get("/channels/status/ping")
    assert await response.json() == {"channels": ["api", "email"]}
    assert (await h.client.get("/channels/status/widget/hooks.md")).status == 200

    class Clash:
        @hookimpl
        def switchboard_web_routes(self):
            return [web.get("/healthz", lambda r: web.Response())]

    with pytest.raises(StartupError, match="GET /healthz"):
        await http_factory(plugins=(Clash(),))


async def test_hook_switchboard_scheduled_jobs(store_factory):
    from router.app import Switchboard
    from router.plugins import build_plugin_manager

    ran = asyncio.Event()

    class Poller:
        @hookimpl
        def switchboard_scheduled_jobs(self, switchboard):
            async def poll(label):
                assert label == "mailbox-1"
                ran.set()

            return [ScheduledJob(id="poll", func=poll, every=timedelta(seconds=30), kwargs={"label": "mailbox-1"},
                                 run_at_start=True)]

    class Twice:
        @hookimpl
        def switchboard_scheduled_jobs(self):
            return [ScheduledJob(id="poll", func=lambda: None, every=timedelta(seconds=1))]

    async def build(*plugins):
        pm = build_plugin_manager(entry_points=False)
        for plugin in plugins:
            pm.register(plugin)
        return Switchboard(make_config(), plugin_manager=pm, store=await store_factory())

    sb = await build(Poller())
    await sb.start()  # a real start: jobs run in the application's one scheduler
    try:
        await asyncio.wait_for(ran.wait(), timeout=5)
        assert sorted(job.id for job in sb.scheduler.get_jobs()) == ["assignment.tick", "poll"]  # with the built-in
    finally:
        await sb.stop()

    clash = await build(Poller(), Twice())
    with pytest.raises(StartupError, match="poll"):
        await clash.start()
    assert not clash.started and not clash.scheduler.running


async def test_hook_switchboard_startup(harness_factory):
    seen = []

    class Opener:
        @hookimpl
        async def switchboard_startup(self, switchboard):
            await asyncio.sleep(0)
            seen.append(await switchboard.store.schema_version())  # the store is open by then

    await harness_factory(plugins=(Opener(),))
    assert seen == [len(migrations("sqlite"))]


async def test_hook_switchboard_shutdown(harness_factory):
    closed = []

    class Broken:
        @hookimpl
        def switchboard_shutdown(self):
            raise RuntimeError("cannot close")

    class Closer:
        @hookimpl
        async def switchboard_shutdown(self, switchboard):
            closed.append(switchboard.started)

    h = await harness_factory(plugins=(Closer(), Broken()))
    await h.sb.stop()
    assert closed == [True]  # one plugin failing to close does not stop the others


async def test_hook_switchboard_inbound_received(harness_factory):
    class Detector:
        @hookimpl
        async def switchboard_inbound_received(self, message):
            if message.language is None and "grazie" in message.text.lower():
                return message.model_copy(update={"language": "it"})
            return None

    h = await harness_factory(plugins=(Detector(),))
    result = await h.ingest(external_id="m1", sender=EMAIL, text="Grazie, ma il pagamento non va")
    assert result.case.language == "it"
    [ack] = await h.read(lambda tx: tx.outbound_for_case(result.case.id))
    assert ack.text.startswith("Grazie per aver contattato")


async def test_hook_switchboard_classify(harness_factory):
    class Topic:
        @hookimpl
        def switchboard_classify(self, message):
            return {"topic": "payment"} if "refund" in message.text else None

    class Urgency:
        @hookimpl
        def switchboard_classify(self, message):
            return {"urgency": "safety"} if "accident" in message.text else {"urgency": "normal"}

    h = await harness_factory(plugins=(Topic(), Urgency()))
    result = await h.ingest(external_id="m1", sender=EMAIL, text="I had an accident, refund please")
    labels = result.case.route["labels"]
    assert (labels["topic"], labels["urgency"]) == ("payment", "safety")  # both plugins' results, merged
    assert labels["language"] == "en"  # merged with the built-in classifier's labels, not replacing them
    assert result.case.priority == 1 and result.case.route["safety_lane"]  # urgency safety → safety lane


async def test_hook_switchboard_select_route(harness_factory):
    class Billing:
        @hookimpl
        def switchboard_select_route(self, message, labels):
            if "refund" in message.text:
                return Route(line="poster", team="billing", tier="L2", priority=2, rule="refunds",
                             reasons=["text mentions refund"])
            return None

    h = await harness_factory(plugins=(Billing(),))
    refund = await h.ingest(external_id="m1", sender=EMAIL, text="refund please")
    other = await h.ingest(external_id="m2", sender={"kind": "email", "value": "b@x.io"}, text="hello")
    assert (refund.case.team, refund.case.tier, refund.case.route["rule"]) == ("billing", "L2", "refunds")
    assert other.case.route["rule"] == "default" and other.case.team is None
    events = await h.read(lambda tx: tx.events_for_case(refund.case.id))
    routed = next(e for e in events if e.type == "case.routed")
    assert routed.data["route"]["reasons"] == ["text mentions refund"]


async def test_hook_switchboard_choose_agent(harness_factory):
    t0 = datetime(2026, 1, 5, 9, tzinfo=timezone.utc)
    busy = AgentState("busy", "Busy", {}, {"default": 3}, load={"api": 2}, last_assigned_at=t0)
    fresh = AgentState("fresh", "Fresh", {}, {"default": 3}, last_assigned_at=t0 + timedelta(minutes=5))
    idle = AgentState("idle", "Idle", {}, {"default": 3}, last_assigned_at=t0)
    harness = await harness_factory()
    hooks = harness.sb.hooks
    # the built-in strategy: least loaded, then longest since the last offer
    assert hooks.choose_agent(case=None, route=Route(), candidates=[busy, fresh, idle]) is idle
    assert hooks.choose_agent(case=None, route=Route(), candidates=[]) is None

    class Rogue:
        @hookimpl(tryfirst=True)
        def switchboard_choose_agent(self):
            return AgentState("stranger", "Stranger", {}, {})

    harness.sb.pm.register(Rogue())
    with pytest.raises(RuntimeError, match="not one of the candidates"):
        hooks.choose_agent(case=None, route=Route(), candidates=[busy])

    # A strategy decides who really gets the offer: the most experienced Italian speaker for Italian cases.
    class BestLinguist:
        @hookimpl
        def switchboard_choose_agent(self, case, candidates):
            if case.language != "it":
                return None
            return max(candidates, key=lambda a: (a.skills.get("lang:it", 0), a.id))

    agents = [assignment_agent("anna", languages={"it": 2, "en": 5}), assignment_agent("bruno", languages={"it": 5})]
    h = await harness_factory(make_config(**assignment_sections(agents)), plugins=(BestLinguist(),))
    assigner = h.sb.stash[ASSIGNER]
    for name in ("anna", "bruno"):
        await assigner.set_presence(name, "online", by=name)
    italian = await h.ingest(external_id="it1", sender=EMAIL, text="Buongiorno, ho un problema", language="it")
    english = await h.ingest(external_id="en1", sender={"kind": "email", "value": "b@example.com"},
                             text="Hello, I have a problem", language="en")
    await assigner.settle()
    assert assigner.work_for(italian.case.ref).offer.agent_id == "bruno"  # the strategy's pick
    assert assigner.work_for(english.case.ref).offer.agent_id == "anna"  # no opinion: the fair default


async def test_hook_switchboard_deliver(harness_factory):
    sent = []

    class Chat:
        @hookimpl
        def switchboard_register_channels(self, registry):
            registry.add(Channel(name="chat", title="Chat"))

        @hookimpl
        async def switchboard_deliver(self, outbound):
            if outbound.channel != "chat":
                return None
            sent.append(outbound.text)
            if len(sent) == 1:
                raise ConnectionResetError("socket closed")  # a crash counts as transient
            return DeliveryResult.sent("chat-42")

    h = await harness_factory(plugins=(Chat(),))
    # An async implementation answering None for other channels leaves them to their own plugin.
    by_api = await h.ingest(external_id="backend/m1", sender=EMAIL, text="hello")
    result = await h.ingest(channel="chat", account="w", external_id="c1", sender={"kind": "app", "value": "u"},
                            text="hi")
    await h.sb.outbox.run_once()
    [outbound] = await h.read(lambda tx: tx.outbound_for_case(result.case.id))
    assert outbound.status is OutboundStatus.PENDING and "ConnectionResetError" in outbound.last_error
    h.clock.advance(timedelta(minutes=1))
    await h.sb.outbox.run_once()
    [outbound] = await h.read(lambda tx: tx.outbound_for_case(result.case.id))
    assert outbound.status is OutboundStatus.SENT and outbound.provider_id == "chat-42"
    assert sent[0] == sent[1] and result.case.ref in sent[0]
    [api_outbound] = await h.read(lambda tx: tx.outbound_for_case(by_api.case.id))
    assert "webhook unreachable" in api_outbound.last_error  # tried by the api plugin, not refused


async def test_deliver_without_any_plugin_for_the_channel_fails_visibly(harness_factory):
    class Mute:
        @hookimpl
        def switchboard_register_channels(self, registry):
            registry.add(Channel(name="fax", title="Fax"))

    h = await harness_factory(plugins=(Mute(),))
    result = await h.ingest(channel="fax", account="f", external_id="f1", sender={"kind": "phone", "value": "+390612345678"},
                            text="hello")
    await h.sb.outbox.run_once()
    [outbound] = await h.read(lambda tx: tx.outbound_for_case(result.case.id))
    assert outbound.status is OutboundStatus.FAILED and "no plugin delivers on channel 'fax'" in outbound.last_error


async def test_hook_switchboard_case_event(http_factory):
    seen = []

    class Observer:
        @hookimpl
        async def switchboard_case_event(self, event, switchboard):
            # Called after commit: the event is already readable.
            stored = await switchboard.store.read(lambda tx: tx.events_after(event.id - 1, 1))
            seen.append((event.type, stored[0].id == event.id))

    class Faulty:
        @hookimpl
        def switchboard_case_event(self, event):
            raise ValueError("observer bug")

    h = await http_factory(plugins=(Observer(), Faulty()))
    response = await h.client.post("/api/v1/messages", headers=auth(), json={
        "external_id": "m1", "sender": EMAIL, "text": "hello"})
    assert response.status == 202  # a failing observer does not fail the ingest
    assert seen == [("customer.created", True), ("customer.identity_linked", True), ("case.created", True),
                    ("case.routed", True), ("message.received", True), ("outbound.queued", True)]


async def test_hook_switchboard_reparse(harness_factory):
    """A channel's reparse turns a held message into a case; one that still fails keeps it held, with why."""
    from router.core.model import InboundMessage

    class Lines:
        @hookimpl
        def switchboard_reparse(self, item, switchboard):
            if item["channel"] != "api":
                return None
            text = item["raw"].decode()
            if not text.startswith("ok:"):
                raise ValueError(f"still unreadable: {text[:10]!r}")
            return InboundMessage(channel="api", account="backend", external_id=f"backend/q{item['id']}",
                                  sender=EMAIL, text=text[3:])

    h = await harness_factory(plugins=(Lines(),))
    good = await h.sb.quarantine.hold(channel="api", account="backend", source_key="k1", reason="bad", raw=b"ok:hello")
    bad = await h.sb.quarantine.hold(channel="api", account="backend", source_key="k2", reason="bad", raw=b"garbage")
    assert await h.sb.quarantine.hold(channel="api", account="backend", source_key="k1", reason="x", raw=b"") == good
    done = await h.sb.quarantine.reprocess(good)
    assert done["status"] == "reprocessed" and done["case_ref"].startswith("TK-")
    case = await h.read(lambda tx: tx.case_by_ref(done["case_ref"]))
    assert [m.text for m in await h.read(lambda tx: tx.messages_for_case(case.id)) if m.direction.value == "in"] == ["hello"]
    held = await h.sb.quarantine.reprocess(bad)
    assert held["status"] == "held" and "still unreadable" in held["reason"] and held["attempts"] == 2

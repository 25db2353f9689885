"""The web console end to end: a real `switchboard run` process, a real Chromium driven by Playwright, customer
messages posted through the API channel and replies delivered to a signed webhook on loopback. No mocks.

These are the console's acceptance criteria: an agent signs in, goes online, gets an offer live (no reload),
accepts it, answers the customer (who receives the reply through the channel), adds an internal note (never sent)
and resolves; a supervisor sees the queue, the agents, the charts and downloads the metrics as CSV; an agent
who opens a case that is not theirs sees why it was refused.
"""
from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import hmac
import io
import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.e2e.servers import EXAMPLE_CONFIG, INTEGRATION, TOKEN, TOKEN_ENV, ServerProcess, message

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Chromium is not installed at /usr/bin/chromium", allow_module_level=True)

from playwright.async_api import Browser, Page, async_playwright, expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PASSWORD = "console-e2e-pw-4b1d"  # every demo account's password (SWITCHBOARD_DEMO_PASSWORD)
WEBHOOK_SECRET_ENV = "SB_E2E_WEBHOOK_SECRET"
WEBHOOK_SECRET = "whsec-console-e2e-91c2"
AGENT = "emma"  # an L1 agent of the poster line, general team, English; her schedule is removed in the copy
OTHER_AGENT = "marco"  # the only agent of the quality team; his schedule is removed too
WAIT = 10_000  # ms: Playwright's expect() timeout
expect.set_options(timeout=WAIT)
ANY = re.compile(r".*", re.DOTALL)  # a to_have_text wildcard


# -- the customer's side of the API channel: a webhook receiver --------------------------------------------------
class WebhookReceiver:
    """An aiohttp server on 127.0.0.1 in its own thread (so it outlives each test's event loop), recording every
    delivery with whether its signature checks out."""

    def __init__(self, secret: str):
        self.secret = secret
        self.deliveries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhook-receiver", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers.get("X-Switchboard-Timestamp", "")
        signature = request.headers.get("X-Switchboard-Signature", "")
        # The documented scheme (plugins/api/transport.py): sha256=HMAC-SHA256(secret, "<timestamp>.<body>").
        expected = "sha256=" + hmac.new(self.secret.encode(), timestamp.encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) <= 300
        record = {"json": json.loads(body), "signature_ok": hmac.compare_digest(expected, signature) and fresh,
                  "delivery_header": request.headers.get("X-Switchboard-Delivery"),
                  "content_type": request.headers.get("Content-Type")}
        with self._lock:
            self.deliveries.append(record)
            number = len(self.deliveries)
        return web.json_response({"id": f"hook-{number}"})

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.deliveries)

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for record in self.received():
                if predicate(record["json"]):
                    return record
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching webhook delivery in {timeout}s; got {self.received()}")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# -- one server for the module -------------------------------------------------------------------------------------
@dataclass
class Deployment:
    server: ServerProcess
    hook: WebhookReceiver

    @property
    def url(self) -> str:
        return self.server.url


def console_config(directory: Path, webhook_url: str) -> Path:
    """The example deployment, with one integration that delivers to `webhook_url` and two agents who are always
    in schedule (so whether they get offers does not depend on the time the tests run)."""
    shutil.copytree(EXAMPLE_CONFIG, directory)
    main_file = directory / "switchboard.yaml"
    main = yaml.safe_load(main_file.read_text(encoding="utf-8"))
    main["integrations"] = [{
        "name": INTEGRATION, "token": {"$env": TOKEN_ENV, "default": TOKEN},
        "scopes": ["ingest", "read", "agent", "supervise"], "trusted": True,  # it may assert the sender's role
        "webhook": {"url": webhook_url, "secret": {"$env": WEBHOOK_SECRET_ENV}, "timeout": "5s"},
    }]
    main_file.write_text(yaml.safe_dump(main, sort_keys=False, allow_unicode=True), encoding="utf-8")
    agents_file = directory / "agents.yaml"
    agents = yaml.safe_load(agents_file.read_text(encoding="utf-8"))
    for agent in agents["agents"]:
        if agent["id"] in (AGENT, OTHER_AGENT):
            agent.pop("schedule", None)
    agents_file.write_text(yaml.safe_dump(agents, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return directory


def _run(coro: Any) -> Any:
    """Run a coroutine on a private loop in another thread (usable from a synchronous, module-scoped fixture)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("console")
    hook = WebhookReceiver(WEBHOOK_SECRET).start()
    server = ServerProcess(console_config(root / "config", hook.url), root / "data", root / "logs", name="console",
                           env={TOKEN_ENV: TOKEN, WEBHOOK_SECRET_ENV: WEBHOOK_SECRET,
                                "SWITCHBOARD_DEMO_PASSWORD": PASSWORD})
    try:
        server.start()
        _run(server.wait_healthy(timeout=30))
        yield Deployment(server, hook)
    finally:
        try:
            if server.proc is not None:
                server.terminate()
        finally:
            server.ensure_stopped()
            hook.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        instance = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture
async def api() -> AsyncIterator[aiohttp.ClientSession]:
    """The integration's own HTTP client (ingest messages, read the queue, act for agents)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"},
                                     timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


# -- helpers ---------------------------------------------------------------------------------------------------------
async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None,
               expected: int | tuple[int, ...] = (200, 201, 202)) -> Any:
    async with session.request(method, url, json=body) as response:
        data = await response.json(content_type=None)
        wanted = expected if isinstance(expected, tuple) else (expected,)
        assert response.status in wanted, f"{method} {url} -> {response.status} {data}"
        return data


async def post_customer_message(session: aiohttp.ClientSession, deployment: Deployment,
                                payload: dict[str, Any]) -> str:
    answer = await call(session, "POST", f"{deployment.url}/api/v1/messages", payload, expected=202)
    ref = answer["case"]["ref"]
    assert ref.startswith("TK-"), answer
    return ref


async def eventually(probe: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    """Poll an async probe until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def agent_state(session: aiohttp.ClientSession, deployment: Deployment, agent_id: str) -> dict[str, Any]:
    return await call(session, "GET", f"{deployment.url}/api/v1/agents/{agent_id}", expected=200)


async def everyone_offline(session: aiohttp.ClientSession, deployment: Deployment) -> None:
    agents = (await call(session, "GET", f"{deployment.url}/api/v1/agents", expected=200))["agents"]
    for agent in agents:
        if agent["presence"] != "offline":
            await call(session, "PUT", f"{deployment.url}/api/v1/agents/{agent['id']}/presence",
                       {"presence": "offline"}, expected=200)
    agents = (await call(session, "GET", f"{deployment.url}/api/v1/agents", expected=200))["agents"]
    assert [a["id"] for a in agents if a["presence"] != "offline"] == []


def watch_page(page: Page) -> dict[str, list[str]]:
    """Collect what would mean the console broke: uncaught errors, and navigations after the first load."""
    seen: dict[str, list[str]] = {"errors": [], "navigations": []}
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    page.on("framenavigated", lambda frame: frame == page.main_frame and seen["navigations"].append(frame.url))
    return seen


async def sign_in(page: Page, deployment: Deployment, account: str) -> None:
    await page.goto(deployment.url + "/console")
    await expect(page.get_by_test_id("login-account")).to_be_visible()
    await page.get_by_test_id("login-account").fill(account)
    await page.get_by_test_id("login-password").fill(PASSWORD)
    await page.get_by_test_id("login-submit").click()
    await expect(page.get_by_test_id("logout")).to_be_visible()
    await expect(page.get_by_test_id("login-account")).to_be_hidden()
    await expect(page.get_by_test_id("error")).to_be_hidden()


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


# -- 1. an agent's day: offer, reply through the channel, note, resolve ----------------------------------------------
async def test_agent_takes_an_offer_live_answers_through_the_channel_notes_and_resolves(
        deployment: Deployment, browser: Browser, api: aiohttp.ClientSession):
    context = await browser.new_context()
    page = await context.new_page()
    seen = watch_page(page)

    # A wrong password is refused with the server's explanation, and the form stays.
    await page.goto(deployment.url + "/console")
    await page.get_by_test_id("login-account").fill(AGENT)
    await page.get_by_test_id("login-password").fill("not-the-password")
    await page.get_by_test_id("login-submit").click()
    await expect(page.get_by_test_id("error")).to_be_visible()
    await expect(page.get_by_test_id("error")).to_contain_text("wrong account or password")
    await expect(page.get_by_test_id("login-submit")).to_be_visible()
    await expect(page.get_by_test_id("logout")).to_be_hidden()

    # The right one signs in (and clears the error).
    await page.get_by_test_id("login-password").fill(PASSWORD)
    await page.get_by_test_id("login-submit").click()
    await expect(page.get_by_test_id("logout")).to_be_visible()
    await expect(page.get_by_test_id("error")).to_be_hidden()
    await expect(page.get_by_test_id("tab-dashboard")).to_be_hidden()  # an agent has no dashboard
    await expect(page.locator("#who-name")).to_have_text("Emma Clarke")
    await expect(page.locator("#stream-status")).to_have_text("Live")  # the event stream is connected
    await expect(page.get_by_test_id("presence")).to_have_value("offline")

    # Online through the presence select: the server knows.
    await page.get_by_test_id("presence").select_option("online")
    await eventually(lambda: _presence_is(api, deployment, AGENT, "online"), "emma online on the server")
    await expect(page.get_by_test_id("presence")).to_have_value("online")
    await expect(page.get_by_test_id("error")).to_be_hidden()
    await expect(page.get_by_test_id("offer")).to_have_count(0)

    # A customer writes; the offer appears without reloading the page.
    await page.evaluate("window.__marker = 1")
    navigations_before = len(seen["navigations"])
    customer = f"{unique('poster')}@customers.example"
    external_id = unique("msg")
    question = f"Hello, how do I change the description of my task? ({unique('q')})"
    ref = await post_customer_message(api, deployment, message(
        external_id, customer, question, subject="Changing my task description", language="en",
        context={"role": "poster"}))
    offer = page.locator(f'[data-testid="offer"][data-case="{ref}"]')
    await expect(offer).to_be_visible()
    await expect(offer).to_contain_text("Changing my task description")
    assert await page.evaluate("window.__marker") == 1, "the page was reloaded"
    assert seen["navigations"][navigations_before:] == [], "the page navigated"
    assert (await agent_state(api, deployment, AGENT))["offers"][0]["case"] == ref

    # Accept: the offer goes, the case is mine and opens with the customer's message.
    await offer.get_by_test_id("offer-accept").click()
    await expect(page.get_by_test_id("offer")).to_have_count(0)
    await expect(page.locator(f'[data-testid="my-case"][data-case="{ref}"]')).to_be_visible()
    case_pane = page.get_by_test_id("case")
    await expect(case_pane).to_be_visible()
    await expect(case_pane).to_have_attribute("data-case", ref)
    await expect(page.get_by_test_id("case-status")).to_have_text("assigned")
    thread = page.get_by_test_id("thread")
    inbound = thread.locator('[data-testid="message"][data-direction="in"]')
    await expect(inbound).to_have_count(1)
    await expect(inbound).to_contain_text(question)
    assert (await agent_state(api, deployment, AGENT))["cases"] == [ref]

    # Reply: the customer gets it through the API channel's webhook, signed; the thread shows it as sent.
    reply_text = f"Open the task, press Edit and change the text. ({unique('r')})"
    await page.get_by_test_id("reply-text").fill(reply_text)
    screenshot = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8  # binary, every byte value
    await page.get_by_test_id("reply-files").set_input_files(
        files=[{"name": "edit-button.png", "mimeType": "image/png", "buffer": screenshot}])
    await page.get_by_test_id("reply-send").click()
    await expect(page.get_by_test_id("reply-text")).to_have_value("")  # cleared once the server took it
    delivered = await deployment.hook.wait_for(lambda d: d.get("text") == reply_text)
    [attached] = delivered["json"]["attachments"]  # the file went to the customer with the reply, byte for byte
    assert (attached["filename"], attached["content_type"]) == ("edit-button.png", "image/png")
    assert base64.b64decode(attached["content"]) == screenshot
    assert delivered["signature_ok"], delivered
    assert delivered["content_type"] == "application/json"
    body = delivered["json"]
    assert body["kind"] == "reply" and body["case_ref"] == ref, body
    assert body["recipient"] == {"kind": "email", "value": customer}, body
    assert body["in_reply_to"] == external_id, body  # the integration's own id, to thread the answer
    assert delivered["delivery_header"] == str(body["delivery_id"])
    outgoing = thread.locator('[data-testid="message"][data-direction="out"]', has_text=reply_text)
    await expect(outgoing).to_have_count(1)
    await expect(outgoing.get_by_test_id("delivery-status")).to_have_text("sent")
    link = outgoing.get_by_test_id("attachment")
    await expect(link).to_have_text("edit-button.png (3 KB)")  # 2,056 bytes, rounded up
    download = await page.request.get(deployment.url + await link.get_attribute("href"))  # the page's cookie
    assert download.status == 200 and await download.body() == screenshot
    await expect(page.get_by_test_id("retry-outbound")).to_have_count(0)

    # An internal note: shown as a note, never delivered to the customer.
    note_text = f"Customer seemed confused by the editor; consider a help article. ({unique('n')})"
    await page.get_by_test_id("note-text").fill(note_text)
    await page.get_by_test_id("note-add").click()
    await expect(page.get_by_test_id("note-text")).to_have_value("")
    note = thread.locator('[data-testid="message"][data-direction="note"]')
    await expect(note).to_have_count(1)
    await expect(note).to_contain_text(note_text)
    await expect(note.get_by_test_id("delivery-status")).to_have_count(0)

    # Resolve: the status shows it, the case leaves my open cases; the satisfaction survey (queued after the
    # note) reaches the customer, and by then the note has had every chance to leak: it did not.
    await page.get_by_test_id("resolve").click()
    await expect(page.get_by_test_id("case-status")).to_have_text("resolved")
    await expect(page.get_by_test_id("resolve")).to_be_hidden()
    await expect(page.get_by_test_id("reopen")).to_be_visible()
    await expect(page.locator(f'[data-testid="my-case"][data-case="{ref}"]')).to_have_count(0)
    survey = await deployment.hook.wait_for(lambda d: d.get("case_ref") == ref and d.get("kind") == "csat")
    assert survey["signature_ok"], survey
    for record in deployment.hook.received():
        assert note_text not in json.dumps(record["json"], ensure_ascii=False), record
        assert record["signature_ok"], record  # the acknowledgement too: every delivery is signed
    assert [d["json"]["kind"] for d in deployment.hook.received() if d["json"].get("case_ref") == ref
            and d["json"]["kind"] == "reply"] == ["reply"]  # the reply went out exactly once

    # Going offline through the select again leaves no agent online for the next test.
    await page.get_by_test_id("presence").select_option("offline")
    await eventually(lambda: _presence_is(api, deployment, AGENT, "offline"), "emma offline on the server")
    assert seen["errors"] == [], seen["errors"]
    assert await page.evaluate("window.__marker") == 1
    await context.close()


async def _presence_is(api: aiohttp.ClientSession, deployment: Deployment, agent_id: str, presence: str) -> bool:
    return (await agent_state(api, deployment, agent_id))["presence"] == presence


# -- 2. the supervisor's dashboard -----------------------------------------------------------------------------------
async def test_supervisor_dashboard_shows_the_waiting_case_agents_charts_and_csv(
        deployment: Deployment, browser: Browser, api: aiohttp.ClientSession):
    await everyone_offline(api, deployment)
    # A dispute between a tasker and a poster: the disputes team of the tasker line, and nobody is online.
    ref = await post_customer_message(api, deployment, message(
        unique("msg"), f"{unique('tasker')}@customers.example",
        "This is unfair, it is not what we agreed with the poster", language="en", context={"role": "tasker"}))

    async def queued() -> list[dict[str, Any]]:  # routing runs after the 202
        queue = (await call(api, "GET", f"{deployment.url}/api/v1/queue", expected=200))["queue"]
        return queue if any(q["ref"] == ref for q in queue) else []

    queue = await eventually(queued, f"{ref} in the queue")
    assert [(q["ref"], q["line"], q["team"]) for q in queue] == [(ref, "tasker", "disputes")], queue  # the only one

    context = await browser.new_context(accept_downloads=True)
    page = await context.new_page()
    seen = watch_page(page)
    await sign_in(page, deployment, "sofia")
    await expect(page.locator("#who-role")).to_have_text("supervisor")
    await expect(page.locator("#presence-wrap")).to_be_hidden()  # sofia does not work as an agent

    tab = page.get_by_test_id("tab-dashboard")
    await expect(tab).to_be_visible()
    await tab.click()
    await expect(tab).to_have_attribute("aria-selected", "true")
    await expect(page.locator("#dashboard-view")).to_be_visible()
    await expect(page.locator("#work-view")).to_be_hidden()

    # Totals: one case waiting.
    totals = page.get_by_test_id("totals")
    waiting_stat = totals.locator("div", has=page.locator("dt", has_text="Waiting"))
    await expect(waiting_stat.locator("dd")).to_have_text("1")
    await expect(totals.locator("dt")).to_have_text(["Waiting", "At risk", "Breached", "Oldest wait"])

    # The queue table: the tasker line's disputes team has it waiting on the API channel.
    queues = page.get_by_test_id("queues")
    await expect(queues.locator("thead th")).to_have_text(
        ["Line", "Team", "Channel", "Waiting", "Oldest wait", "At risk", "Breached"])
    row = queues.locator("tbody tr", has_text="disputes")
    await expect(row).to_have_count(1)
    await expect(row.locator("td")).to_have_text(["tasker", "disputes", "api", "1", ANY, ANY, ANY])

    # The agents table lists every agent of agents.yaml, with presence (nobody online).
    configured = yaml.safe_load((deployment.server.config_dir / "agents.yaml").read_text(encoding="utf-8"))["agents"]
    agents = page.get_by_test_id("agents")
    await expect(agents.locator("tbody tr")).to_have_count(len(configured))
    for agent in configured:
        agent_row = agents.locator("tbody tr", has=page.locator("td:first-child", has_text=agent["name"]))
        await expect(agent_row).to_have_count(1)
        await expect(agent_row.locator("td").nth(1)).to_have_text("offline")
    await expect(page.get_by_test_id("at-risk").locator("thead th").first).to_have_text("Case")

    # Charts: the volume bars count this hour's cases; the response chart is drawn too.
    volume = page.get_by_test_id("chart-volume")
    await expect(volume.locator("rect.bar").first).to_be_attached()
    heights = await volume.locator("rect.bar").evaluate_all("bars => bars.map(b => Number(b.getAttribute('height')))")
    assert len(heights) >= 24 and max(heights) > 0, heights
    created_today = await volume.locator("rect.bar title").evaluate_all(
        "ts => ts.map(t => Number(t.textContent.split(': ').pop()))")
    assert sum(created_today) >= 1, created_today
    response_chart = page.get_by_test_id("chart-response")
    await expect(response_chart.locator("> *").first).to_be_attached()

    # The metrics table by line, and its CSV through the page's own link and session.
    metrics = page.get_by_test_id("metrics")
    tasker_row = metrics.locator("tbody tr", has=page.locator("td:first-child", has_text="tasker"))
    await expect(tasker_row).to_have_count(1)
    link = page.get_by_test_id("metrics-csv")
    await expect(link).to_have_attribute("href", re.compile(re.escape("format=csv")))
    href = await link.get_attribute("href")
    assert "by=line" in href and "from=" in href and "to=" in href, href
    response = await page.request.get(deployment.url + href)
    assert response.status == 200, await response.text()
    assert response.headers["content-type"].startswith("text/csv"), response.headers
    rows = list(csv.reader(io.StringIO(await response.text())))
    assert rows and rows[0][0] == "line" and "created" in rows[0], rows[:2]
    assert any(r[0] == "tasker" for r in rows[1:]), rows
    async with page.expect_download() as download_info:
        await link.click()
    download = await download_info.value
    # The server's Content-Disposition names the file (it wins over the link's download attribute).
    assert re.fullmatch(r"switchboard-metrics-by-line-\d{8}-\d{8}\.csv", download.suggested_filename), \
        download.suggested_filename
    assert response.headers["content-disposition"] == f'attachment; filename="{download.suggested_filename}"'
    downloaded = Path(await download.path()).read_text(encoding="utf-8")
    assert downloaded.splitlines()[0] == ",".join(rows[0]), downloaded[:200]

    assert seen["errors"] == [], seen["errors"]
    await context.close()


# -- 3. access control, as the agent sees it ---------------------------------------------------------------------------
async def test_agent_opening_a_case_held_by_someone_else_sees_the_403_detail(
        deployment: Deployment, browser: Browser, api: aiohttp.ClientSession):
    # Marco (the quality team's only agent) holds a case about a review.
    await call(api, "PUT", f"{deployment.url}/api/v1/agents/{OTHER_AGENT}/presence", {"presence": "online"},
               expected=200)
    secret_text = f"The tasker left me a one star review and I want it removed ({unique('s')})"
    ref = await post_customer_message(api, deployment, message(
        unique("msg"), f"{unique('poster')}@customers.example", secret_text, language="en",
        context={"role": "poster"}))

    async def offered() -> dict[str, Any] | None:
        offers = (await agent_state(api, deployment, OTHER_AGENT))["offers"]
        return next((o for o in offers if o["case"] == ref), None)

    offer = await eventually(offered, f"the offer of {ref} to marco")
    await call(api, "POST", f"{deployment.url}/api/v1/offers/{offer['id']}/accept", {"agent": OTHER_AGENT},
               expected=200)
    assert ref in (await agent_state(api, deployment, OTHER_AGENT))["cases"]

    context = await browser.new_context()
    page = await context.new_page()
    seen = watch_page(page)
    await sign_in(page, deployment, AGENT)

    # Opened by its link (#case/REF): refused, with the server's reason; nothing of the case is shown.
    direct = await context.new_page()
    direct_seen = watch_page(direct)
    await direct.goto(f"{deployment.url}/console#case/{ref}")
    error = direct.get_by_test_id("error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text(f"{ref} is not yours")
    await expect(direct.get_by_test_id("case")).to_be_hidden()
    await expect(direct.get_by_test_id("logout")).to_be_visible()  # still signed in: a 403, not a 401
    assert secret_text not in await direct.content()

    # The same through the API with the page's session cookie: the very detail the page showed.
    response = await direct.request.get(f"{deployment.url}/api/v1/cases/{ref}")
    assert response.status == 403
    problem = await response.json()
    assert problem["error"] == "forbidden", problem
    await expect(error.locator("#error-text")).to_have_text(problem["detail"])

    # And through the "Open case" form of the first page.
    await page.get_by_test_id("open-ref").fill(ref.lower())
    await page.get_by_test_id("open-submit").click()
    await expect(page.get_by_test_id("error")).to_contain_text(f"{ref} is not yours")
    await expect(page.get_by_test_id("case")).to_be_hidden()
    assert secret_text not in await page.content()

    # The case stays Marco's: the refusal changed nothing.
    assert ref in (await agent_state(api, deployment, OTHER_AGENT))["cases"]
    assert seen["errors"] == [] and direct_seen["errors"] == [], (seen, direct_seen)
    await call(api, "PUT", f"{deployment.url}/api/v1/agents/{OTHER_AGENT}/presence", {"presence": "offline"},
               expected=200)
    await context.close()


# -- a case that fails to open never leaves another case's actions in its place -------------------------------------
async def _held_by(api: aiohttp.ClientSession, deployment: Deployment, agent_id: str, **payload: Any) -> str:
    """A new poster case, offered to `agent_id` (alone online) and accepted through the API."""
    ref = await post_customer_message(api, deployment, message(
        unique("msg"), f"{unique('poster')}@customers.example", "Hello, my task is stuck", language="en",
        context={"role": "poster"}, **payload))

    async def offered() -> dict[str, Any] | None:
        return next((o for o in (await agent_state(api, deployment, agent_id))["offers"] if o["case"] == ref), None)

    offer = await eventually(offered, f"the offer of {ref} to {agent_id}")
    await call(api, "POST", f"{deployment.url}/api/v1/offers/{offer['id']}/accept", {"agent": agent_id},
               expected=200)
    return ref


async def test_a_case_that_fails_to_load_is_not_shown_as_the_one_before(
        deployment: Deployment, browser: Browser, api: aiohttp.ClientSession):
    await everyone_offline(api, deployment)
    await call(api, "PUT", f"{deployment.url}/api/v1/agents/{AGENT}/presence", {"presence": "online"}, expected=200)
    first = await _held_by(api, deployment, AGENT, subject="alice's problem")
    unbroken = "x" * 400  # a subject with no place to wrap
    second = await _held_by(api, deployment, AGENT, subject=unbroken)
    blank = await _held_by(api, deployment, AGENT, subject="   ")
    context = await browser.new_context()
    page = await context.new_page()
    seen = watch_page(page)
    await sign_in(page, deployment, AGENT)
    await page.locator(f'#my-cases [data-case="{first}"]').click()
    await expect(page.locator("#case-ref")).to_have_text(first)
    await page.get_by_test_id("reply-text").fill("Answer meant for alice")

    # The server answers 503 once for the second case: its pane must not show the first case's text and actions.
    failures: list[str] = []

    async def fail_once(route):
        if not failures:
            failures.append(route.request.url)
            await route.fulfill(status=503, content_type="application/json",
                                body='{"error": "store_unavailable", "detail": "try again shortly"}')
        else:
            await route.continue_()

    await page.route(f"**/api/v1/cases/{second}", fail_once)
    await page.locator(f'#my-cases [data-case="{second}"]').click()
    await expect(page.get_by_test_id("error")).to_contain_text("try again shortly")
    await expect(page.get_by_test_id("case")).to_be_hidden()  # no reply form, no resolve button, no alice
    await expect(page.locator("#case-placeholder")).to_have_text(f"{second} could not be opened.")
    assert failures, "the route did not intercept the case's load"

    # Opened again, it loads; the long subject wraps inside the page, and the first case's draft stayed with it.
    await page.locator(f'#my-cases [data-case="{second}"]').click()
    await expect(page.locator("#case-ref")).to_have_text(second)
    await expect(page.locator("#case-subject")).to_have_text(unbroken)
    await expect(page.get_by_test_id("reply-text")).to_have_value("")
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    await page.locator(f'#my-cases [data-case="{blank}"]').click()
    await expect(page.locator("#case-subject")).to_have_text("(no subject)")
    await page.locator(f'#my-cases [data-case="{first}"]').click()
    await expect(page.get_by_test_id("reply-text")).to_have_value("Answer meant for alice")
    assert seen["errors"] == [], seen
    await call(api, "PUT", f"{deployment.url}/api/v1/agents/{AGENT}/presence", {"presence": "offline"}, expected=200)
    await context.close()

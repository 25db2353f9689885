// Switchboard web console: one dependency-free ES module.
// All user-provided data goes into the page through textContent / attributes, never innerHTML.

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const HOUR = 3600e3;
const DAY = 24 * HOUR;
const STALE_OFFER = new Set([404, 409, 410]);
const CLOSED_STATUSES = new Set(["resolved", "closed"]);
const MY_CASES_EVENTS = new Set([
  "assignment.accepted", "case.status_changed", "case.transferred", "case.escalated", "case.merged",
]);
const STREAM_TYPES = [
  "reset", "offer.created", "offer.expired", "offer.declined", "offer.rescinded", "assignment.accepted",
  "message.received", "message.sent", "note.added", "case.status_changed", "case.transferred",
  "case.escalated", "case.merged", "case.linked", "outbound.sent", "outbound.failed", "outbound.delivered",
  "outbound.bounced", "sla.warning", "sla.breached", "csat.answered", "agent.presence",
];

const state = {
  me: null, // GET /me answer
  offers: new Map(), // String(offer id) -> {id, case, expires_at, summary}
  caseInfo: new Map(), // ref -> case summary (null while being fetched), for offers
  myCases: [],
  unread: new Set(), // refs of my cases with customer messages not yet seen
  drafts: new Map(), // ref -> {reply, note}
  openRef: null,
  open: null, // GET /cases/{ref} answer of the open case
  overview: null,
  stream: null,
  view: "work",
  dashTimer: null,
};

// ---------------------------------------------------------------- HTTP

class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail || `Request failed (HTTP ${status}).`);
    this.status = status;
    this.code = body?.error;
  }
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (method !== "GET") {
    init.headers["X-Requested-With"] = "switchboard";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body ?? {});
  }
  const res = await fetch(path, init);
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

const get = (path) => api("GET", path);
const post = (path, body) => api("POST", path, body);
const casePath = (ref, action = "") => `/api/v1/cases/${encodeURIComponent(ref)}${action && "/" + action}`;

// ---------------------------------------------------------------- DOM helpers

function build(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value == null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child != null && child !== false));
  return node;
}

const el = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
const svg = (tag, attrs, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);
const badge = (text, cls = "") => (text == null || text === "" ? null : el("span", { class: `badge ${cls}`, text }));
const statusBadge = (status) => badge(status, `status-${status}`);
const refButton = (ref) => el("button", { type: "button", class: "link", onclick: () => openCase(ref) }, ref);

function tags(c) {
  return el("span", { class: "tags" },
    badge(c.channel, "channel"), badge(c.line), badge(c.team), badge(c.tier),
    c.priority != null && badge(`priority ${c.priority}`, "priority"));
}

function fillSelect(select, options) {
  const keep = select.value;
  select.replaceChildren(...options.map(([value, label]) => el("option", { value }, label)));
  select.value = options.some(([value]) => value === keep) ? keep : options[0]?.[0] ?? "";
}

function fillTable(table, columns, rows, emptyText) {
  const head = el("thead", {}, el("tr", {}, ...columns.map(([label]) => el("th", { scope: "col", text: label }))));
  const body = rows.length
    ? rows.map((row) => el("tr", {}, ...columns.map(([, cell]) => el("td", {}, cell(row) ?? "—"))))
    : [el("tr", {}, el("td", { colspan: columns.length, class: "muted", text: emptyText }))];
  table.replaceChildren(...[table.caption].filter(Boolean), head, el("tbody", {}, ...body));
}

// ---------------------------------------------------------------- formatting

function fmtDuration(seconds) {
  if (seconds == null || Number.isNaN(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  const two = (big, bigUnit, small, smallUnit) => `${big}${bigUnit}${small ? ` ${small}${smallUnit}` : ""}`;
  if (s < 60) return `${s}s`;
  if (s < 3600) return two(Math.floor(s / 60), "m", s % 60, "s");
  if (s < 86400) return two(Math.floor(s / 3600), "h", Math.floor((s % 3600) / 60), "m");
  return two(Math.floor(s / 86400), "d", Math.floor((s % 86400) / 3600), "h");
}

function fmtTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return date.toDateString() === new Date().toDateString()
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

const timeEl = (iso) => (iso ? el("time", { datetime: iso, title: iso, text: fmtTime(iso) }) : "—");
const pct = (rate) => (rate == null ? "—" : `${Math.round(rate * 100)}%`);
const isoAgo = (ms) => new Date(Date.now() - ms).toISOString();
const nameOf = (item) => (item && typeof item === "object" ? item.id ?? item.name : item);

function fmtLoad(load = {}, capacity = {}) {
  const channels = [...new Set([...Object.keys(load), ...Object.keys(capacity)])].filter((ch) => ch !== "default");
  if (!channels.length) return `0/${capacity.default ?? "—"}`;
  return channels.map((ch) => `${ch} ${load[ch] ?? 0}/${capacity[ch] ?? capacity.default ?? "—"}`).join(", ");
}

// ---------------------------------------------------------------- feedback

function displayError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

function showError(err) {
  if (err?.status === 401) showLogin();
  displayError(err?.message || String(err));
}

/** A case's subject for display: an empty or blank one reads as "(no subject)", not as nothing. */
const subjectOf = (c, none = "(no subject)") => c?.subject?.trim() || none;

function announce(message) {
  $("live").textContent = message;
}

/** A user action: clears the previous error, disables its control while running, reports failures. */
async function act(control, fn) {
  clearError();
  if (control) control.disabled = true;
  try {
    await fn();
    return true;
  } catch (err) {
    showError(err);
    return false;
  } finally {
    if (control) control.disabled = false;
  }
}

/** A background refresh: reports failures but leaves the error region alone otherwise. */
const background = (fn) => Promise.resolve().then(fn).catch(showError);

/** Run `fn` in the background at most once per `ms`, however often this is asked for meanwhile. */
function coalesce(fn, ms) {
  let timer = null;
  return () => {
    timer ??= setTimeout(() => {
      timer = null;
      background(fn);
    }, ms);
  };
}

function groupBy(items, key) {
  const groups = new Map();
  for (const item of items) groups.set(key(item), [...(groups.get(key(item)) ?? []), item]);
  return groups;
}

// ---------------------------------------------------------------- session

async function boot() {
  try {
    await refreshMe();
  } catch (err) {
    if (err.status === 401) return showLogin();
    return displayError(err.message);
  }
  $("login-view").hidden = true;
  $("topbar").hidden = false;
  startStream();
  showView("work");
  await background(loadMyCases);
  const wanted = location.hash.match(/^#case\/(.+)$/);
  if (wanted && !state.openRef) openCase(decodeURIComponent(wanted[1]));
}

async function reloadAll() {
  await refreshMe();
  await Promise.all([
    loadMyCases(),
    state.openRef && refreshOpenCase(),
    state.view === "dashboard" && refreshDashboard(),
  ]);
}

async function refreshMe() {
  state.me = await get("/api/v1/me");
  renderHeader();
  setOffers(state.me.agent?.offers ?? []);
}

function showLogin() {
  stopStream();
  clearInterval(state.dashTimer);
  closeCase();
  Object.assign(state, { me: null, myCases: [], overview: null, dashTimer: null, view: "work" });
  state.offers.clear();
  state.unread.clear();
  state.drafts.clear();
  for (const id of ["topbar", "work-view", "dashboard-view"]) $(id).hidden = true;
  $("login-view").hidden = false;
  if (!$("login-form").contains(document.activeElement)) $("login-account").focus();
}

async function login(event) {
  event.preventDefault();
  const credentials = { account: $("login-account").value.trim(), password: $("login-password").value };
  const ok = await act($("login-submit"), () => post("/api/v1/auth/login", credentials));
  if (!ok) return;
  $("login-password").value = "";
  await boot();
}

const isSupervisor = () => ["supervisor", "admin"].includes(state.me?.account.role);
const myAgentId = () => state.me?.account.agent_id ?? null;
const holds = (ref) => state.myCases.some((c) => c.ref === ref);

function renderHeader() {
  const { account, agent } = state.me;
  $("who-name").textContent = account.name;
  $("who-role").textContent = account.role;
  $("tab-dashboard").hidden = !isSupervisor();
  $("presence-wrap").hidden = !agent;
  $("agent-load").textContent = agent
    ? `Load ${fmtLoad(agent.load, agent.capacity)}${agent.in_schedule === false ? " · off schedule" : ""}`
    : "";
  if (agent) $("presence").value = agent.presence;
  renderTransferOptions();
}

async function changePresence(event) {
  const select = event.target;
  await act(select, async () => {
    try {
      state.me.agent = await api("PUT", "/api/v1/me/presence", { presence: select.value });
    } finally {
      renderHeader(); // shows the server's presence, reverting the select if the change failed
    }
  });
}

// ---------------------------------------------------------------- views

function showView(view) {
  if (view === "dashboard" && !isSupervisor()) view = "work";
  state.view = view;
  for (const name of ["work", "dashboard"]) {
    const tab = $(`tab-${name}`);
    tab.setAttribute("aria-selected", String(name === view));
    tab.tabIndex = name === view ? 0 : -1;
    $(`${name}-view`).hidden = name !== view;
  }
  const polling = view === "dashboard";
  if (polling === Boolean(state.dashTimer)) return;
  clearInterval(state.dashTimer);
  state.dashTimer = null;
  if (polling) {
    background(refreshDashboard);
    state.dashTimer = setInterval(() => document.hidden || background(refreshDashboard), 10_000);
  }
}

function tabKeys(event) {
  if (!["ArrowLeft", "ArrowRight", "Home", "End"].includes(event.key)) return;
  const tabs = [...document.querySelectorAll('[role="tab"]:not([hidden])')];
  const index = tabs.indexOf(document.activeElement);
  const next = { ArrowLeft: index - 1, ArrowRight: index + 1, Home: 0, End: tabs.length - 1 }[event.key];
  const tab = tabs[(next + tabs.length) % tabs.length];
  tab.focus();
  tab.click();
  event.preventDefault();
}

// ---------------------------------------------------------------- offers

function setOffers(list) {
  const known = state.offers;
  state.offers = new Map(list.map((offer) => {
    const id = String(offer.id);
    return [id, { summary: known.get(id)?.summary, ...offer }];
  }));
  renderOffers();
}

function dropOffer(id) {
  if (id != null && state.offers.delete(String(id))) renderOffers();
}

function receiveOffer(ev) {
  if (!ev.case) return background(refreshMe); // no summary in the event: ask the server
  const offer = { id: ev.data.offer, case: ev.case.ref, expires_at: ev.data.expires_at, summary: ev.case };
  state.offers.set(String(offer.id), offer);
  renderOffers();
  const left = (Date.parse(offer.expires_at) - Date.now()) / 1000;
  announce(`New offer ${offer.case}: ${subjectOf(ev.case, "no subject")}. Expires in ${fmtDuration(left)}.`);
}

const offerSummary = (offer) => offer.summary ?? state.caseInfo.get(offer.case) ?? { ref: offer.case };

/** Offers listed by GET /me carry only the ref: fetch the case summary once, quietly. */
async function enrichOffer(offer) {
  if (offer.summary || state.caseInfo.has(offer.case)) return;
  state.caseInfo.set(offer.case, null);
  try {
    state.caseInfo.set(offer.case, (await get(casePath(offer.case))).case);
    renderOffers();
  } catch {
    // not allowed to read the case before accepting: the ref alone will do
  }
}

function renderOffers() {
  const offers = [...state.offers.values()].sort((a, b) => Date.parse(a.expires_at) - Date.parse(b.expires_at));
  $("offers").replaceChildren(...offers.map(offerItem));
  $("offers-empty").hidden = offers.length > 0;
  offers.forEach(enrichOffer);
  tickCountdowns();
}

function offerItem(offer) {
  const summary = offerSummary(offer);
  return el("li", { class: "card offer", "data-testid": "offer", "data-case": offer.case },
    el("div", { class: "row" },
      el("strong", { text: offer.case }),
      el("span", { class: "countdown", role: "timer", "data-expires": offer.expires_at })),
    el("div", { class: "subject", text: subjectOf(summary) }),
    tags(summary),
    el("div", { class: "row" },
      el("button", {
        type: "button", class: "primary", "data-testid": "offer-accept", "aria-label": `Accept ${offer.case}`,
        onclick: (e) => answerOffer(offer, "accept", e.currentTarget),
      }, "Accept"),
      el("button", {
        type: "button", "data-testid": "offer-decline", "aria-label": `Decline ${offer.case}`,
        onclick: (e) => answerOffer(offer, "decline", e.currentTarget),
      }, "Decline")));
}

function answerOffer(offer, verb, button) {
  const body = verb === "decline" ? { reason: "declined from console" } : {};
  return act(button, async () => {
    try {
      const answer = await post(`/api/v1/offers/${encodeURIComponent(offer.id)}/${verb}`, body);
      dropOffer(offer.id);
      if (verb === "accept") {
        await loadMyCases();
        openCase(answer?.case ?? offer.case);
      }
    } catch (err) {
      if (STALE_OFFER.has(err.status)) dropOffer(offer.id);
      throw err;
    }
  });
}

function tickCountdowns() {
  for (const node of document.querySelectorAll("[data-expires]")) {
    const left = (Date.parse(node.dataset.expires) - Date.now()) / 1000;
    node.textContent = left > 0 ? `${fmtDuration(left)} left` : "expired";
    node.classList.toggle("urgent", left < 15);
  }
}

// ---------------------------------------------------------------- my cases

async function loadMyCases() {
  state.myCases = myAgentId() ? (await get("/api/v1/me/cases")).cases : [];
  renderMyCases();
}

function renderMyCases() {
  $("my-cases").replaceChildren(...state.myCases.map((c) => el("li", {},
    el("button", {
      type: "button", class: "card case-item", "data-testid": "my-case", "data-case": c.ref,
      "aria-current": c.ref === state.openRef ? "true" : null, onclick: () => openCase(c.ref),
    },
    el("span", { class: "row" },
      el("strong", { text: c.ref }), statusBadge(c.status),
      state.unread.has(c.ref) && el("span", { class: "unread", title: "new message" },
        el("span", { class: "sr-only", text: "new message" }))),
    el("span", { class: "subject", text: subjectOf(c) }),
    tags(c)))));
  $("my-cases-empty").hidden = state.myCases.length > 0;
}

// ---------------------------------------------------------------- case pane

function openCase(ref) {
  ref = ref.trim();
  if (!ref) return;
  if (ref !== state.openRef) {
    switchDrafts(ref);
    // Never show one case under another's reference: until this one has loaded, the pane (and with it every
    // action, which goes to the open reference) is hidden.
    state.open = null;
    $("case").hidden = true;
    $("case-placeholder").textContent = `Opening ${ref}…`;
    $("case-placeholder").hidden = false;
  }
  state.openRef = ref;
  state.unread.delete(ref);
  history.replaceState(null, "", `#case/${encodeURIComponent(ref)}`);
  showView("work");
  renderMyCases();
  return act(null, async () => {
    try {
      await loadCase(ref);
    } catch (err) {
      if (state.openRef === ref && !state.open) $("case-placeholder").textContent = `${ref} could not be opened.`;
      throw err;
    }
    if (state.openRef === state.open?.case.ref) $("case-title").focus();
  });
}

async function loadCase(ref) {
  const data = await get(casePath(ref));
  if (state.openRef !== ref) return; // the user opened another case meanwhile
  state.openRef = data.case.ref; // the server may normalise the ref's case
  state.open = data;
  renderCase(data);
}

/** Re-fetch the open case; if it is no longer visible to me (transferred away), close the pane. */
async function refreshOpenCase() {
  const ref = state.openRef;
  if (!ref) return;
  try {
    await loadCase(ref);
  } catch (err) {
    if (err.status !== 403 && err.status !== 404) throw err;
    closeCase();
    announce(`Case ${ref} is no longer available to you.`);
  }
}

function closeCase() {
  state.openRef = null;
  state.open = null;
  $("case").hidden = true;
  delete $("case").dataset.case;
  $("case-placeholder").textContent = "Select a case to open it.";
  $("case-placeholder").hidden = false;
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
}

function switchDrafts(ref) {
  if (state.openRef) state.drafts.set(state.openRef, { reply: $("reply-text").value, note: $("note-text").value });
  const draft = state.drafts.get(ref) ?? { reply: "", note: "" };
  $("reply-text").value = draft.reply;
  $("note-text").value = draft.note;
  for (const id of ["reply-to", "transfer-team", "transfer-target", "action-reason"]) $(id).value = "";
  $("reply-waiting").checked = false;
}

function renderCase({ case: c, customer, messages = [], events = [], outbound = [], links = [], survey }) {
  const pane = $("case");
  pane.hidden = false;
  pane.dataset.case = c.ref;
  $("case-placeholder").hidden = true;
  $("case-ref").textContent = c.ref;
  $("case-subject").textContent = subjectOf(c);
  $("case-status").textContent = c.status;
  $("case-status").className = `badge status-${c.status}`;
  $("case-meta").replaceChildren(...metaPairs([
    ["Channel", c.channel], ["Line", c.line], ["Team", c.team], ["Tier", c.tier], ["Priority", c.priority],
    ["Order", c.order_id], ["Language", c.language], ["Created", timeEl(c.created_at)],
    ["Resolved", c.resolved_at && timeEl(c.resolved_at)],
    ["CSAT", survey && (survey.score != null ? `${survey.score}` : "sent, no answer yet")],
  ]));
  $("case-customer").replaceChildren(
    el("strong", { text: customer?.display_name ?? "Unknown customer" }),
    ...(customer?.identities ?? []).map((identity) => badge(identity, "identity")));
  $("case-merged").hidden = !c.merged_into;
  $("case-merged").replaceChildren(...(c.merged_into ? ["Merged into ", refButton(c.merged_into)] : []));
  renderThread(c.ref, messages, outbound);
  renderLinks(links);
  fillSelect($("reply-to"), [["", "Customer's last channel"], ...(customer?.identities ?? []).map((i) => [i, i])]);
  $("resolve").hidden = CLOSED_STATUSES.has(c.status);
  $("close").hidden = c.status === "closed";
  $("reopen").hidden = !CLOSED_STATUSES.has(c.status);
  $("case-events").replaceChildren(...events.map((e) =>
    el("li", {}, timeEl(e.at), ` ${e.type}`, e.actor ? ` by ${e.actor}` : "")));
  renderTransferOptions();
}

function metaPairs(pairs) {
  return pairs.filter(([, value]) => value != null && value !== "")
    .map(([label, value]) => el("div", {}, el("dt", { text: label }), el("dd", {}, value)));
}

function renderThread(ref, messages, outbound) {
  const thread = $("thread");
  const deliveries = groupBy(outbound, (o) => o.message_id ?? null);
  const sorted = [...messages].sort((a, b) => Date.parse(a.created_at) - Date.parse(b.created_at) || a.id - b.id);
  const grew = thread.dataset.case !== ref || thread.childElementCount !== sorted.length;
  thread.replaceChildren(...sorted.map((m) => messageItem(m, deliveries.get(m.id) ?? [])));
  thread.dataset.case = ref;
  if (grew) thread.scrollTop = thread.scrollHeight;
  const loose = outbound.filter((o) => !sorted.some((m) => m.id === o.message_id));
  $("auto-outbound").replaceChildren(...loose.map((o) => el("li", {}, badge(o.kind), deliveryLine(o))));
  $("auto-outbound-wrap").hidden = loose.length === 0;
}

function messageItem(m, deliveries) {
  const who = m.direction === "note" ? `Internal note by ${m.sender ?? "unknown"}` : m.sender ?? "";
  return el("li", { class: `message ${m.direction}`, "data-testid": "message", "data-direction": m.direction },
    el("div", { class: "row message-head" }, badge(m.channel, "channel"), el("span", { class: "sender", text: who }),
      timeEl(m.created_at)),
    el("p", { class: "text", text: m.text ?? "" }),
    m.attachments?.length > 0 && el("ul", { class: "attachments", "aria-label": "Attachments" },
      ...m.attachments.map(attachmentItem)),
    ...deliveries.map(deliveryLine));
}

function attachmentItem(a) {
  const size = a.size != null ? ` (${Math.ceil(a.size / 1024)} KB)` : "";
  const name = `${a.filename ?? "attachment"}${size}`;
  if (a.id == null || !state.openRef) return el("li", { text: name });
  const href = `/api/v1/cases/${encodeURIComponent(state.openRef)}/attachments/${a.id}`;
  return el("li", {}, el("a", { href, download: a.filename ?? "attachment", "data-testid": "attachment", text: name }));
}

async function fileAsAttachment(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return { filename: file.name, content_type: file.type || "application/octet-stream", content: btoa(binary) };
}

function deliveryLine(o) {
  const failed = o.status === "failed";
  return el("div", { class: "row delivery" },
    el("span", { class: `badge status-${o.status}`, "data-testid": "delivery-status", text: o.status }),
    o.recipient && el("span", { class: "muted", text: `to ${o.recipient}` }),
    o.attempts > 1 && el("span", { class: "muted", text: `${o.attempts} attempts` }),
    failed && el("span", { class: "error-text", text: o.last_error ?? "delivery failed" }),
    failed && el("button", {
      type: "button", "data-testid": "retry-outbound",
      onclick: (e) => act(e.currentTarget, async () => {
        await post(`/api/v1/outbound/${encodeURIComponent(o.id)}/retry`, {});
        await refreshOpenCase();
      }),
    }, "Retry"));
}

function renderLinks(links) {
  $("links").replaceChildren(...links.map((link) => el("li", { class: "row" },
    refButton(link.ref), badge(link.relation), statusBadge(link.status),
    el("span", { text: subjectOf(link) }))));
  $("links-wrap").hidden = links.length === 0;
}

// ---------------------------------------------------------------- case actions

/** POST an action on the open case, run `done` once it succeeded, then refresh the case and my list. */
function caseAction(control, action, body, done) {
  const ref = state.open?.case.ref;  // the case on screen, never one still loading
  if (!ref || ref !== state.openRef) return act(control, async () => {
    throw new Error("This case has not finished loading; wait a moment or open it again.");
  });
  return act(control, async () => {
    await post(casePath(ref, action), body);
    done?.();
    await Promise.all([refreshOpenCase(), loadMyCases()]);
  });
}

const reasonOr = (fallback) => $("action-reason").value.trim() || fallback;
const clearReason = () => { $("action-reason").value = ""; };
const submitter = (event) => event.submitter ?? event.target.querySelector('[type="submit"]');

async function sendReply(event) {
  event.preventDefault();
  const button = submitter(event);
  const text = $("reply-text").value.trim();
  const files = [...$("reply-files").files];
  if (!text && files.length === 0) return displayError("Write a reply or attach a file before sending.");
  const body = { text, waiting_customer: $("reply-waiting").checked };
  if ($("reply-to").value) body.to = $("reply-to").value;
  if (files.length) body.attachments = await Promise.all(files.map(fileAsAttachment));
  caseAction(button, "replies", body, () => {
    $("reply-text").value = "";
    $("reply-files").value = "";
    $("reply-waiting").checked = false;
  });
}

function addNote(event) {
  event.preventDefault();
  const text = $("note-text").value.trim();
  if (!text) return displayError("Write the note before adding it.");
  caseAction(submitter(event), "notes", { text }, () => { $("note-text").value = ""; });
}

function transfer(event) {
  event.preventDefault();
  const body = { reason: reasonOr("transferred from console") };
  if ($("transfer-team").value) body.team = $("transfer-team").value;
  const target = $("transfer-target").value.trim();
  if (target) body[$("transfer-kind").value] = target;
  if (Object.keys(body).length === 1) return displayError("Choose a team or enter a transfer target.");
  caseAction(submitter(event), "transfer", body, () => {
    $("transfer-team").value = "";
    $("transfer-target").value = "";
    clearReason();
  });
}

function knownTeams() {
  const teams = new Set((state.me?.account.teams ?? []).map(nameOf));
  state.overview?.queues.forEach((q) => q.team && teams.add(q.team));
  if (state.open?.case.team) teams.add(state.open.case.team);
  return [...teams].filter(Boolean).sort();
}

function renderTransferOptions() {
  const teams = knownTeams();
  fillSelect($("transfer-team"), [["", "(keep team)"], ...teams.map((t) => [t, t])]);
  const suggestions = {
    team: teams,
    line: (state.me?.account.lines ?? []).map(nameOf),
    agent: (state.overview?.agents ?? []).map((a) => a.id),
    tier: [],
  }[$("transfer-kind").value] ?? [];
  $("transfer-options").replaceChildren(...suggestions.map((value) => el("option", { value })));
}

// ---------------------------------------------------------------- event stream

function startStream() {
  stopStream();
  const stream = new EventSource("/api/v1/stream");
  for (const type of STREAM_TYPES) stream.addEventListener(type, (msg) => onStreamEvent(type, msg));
  stream.onopen = () => setStreamStatus("Live", "live");
  stream.onerror = () => {
    if (stream.readyState !== EventSource.CLOSED) return setStreamStatus("Reconnecting…", "");
    setStreamStatus("Offline", "offline");
    setTimeout(() => recoverStream(stream), 5000);
  };
  state.stream = stream;
}

function stopStream() {
  state.stream?.close();
  state.stream = null;
}

function setStreamStatus(text, cls) {
  $("stream-status").textContent = text;
  $("stream-status").className = `stream-status ${cls}`;
}

/** The browser gave up on the stream (e.g. an HTTP error): check the session, then start afresh. */
async function recoverStream(stream) {
  if (state.stream !== stream) return; // signed out or already restarted
  try {
    await get("/api/v1/me");
  } catch (err) {
    if (err.status === 401) return showLogin();
    return setTimeout(() => recoverStream(stream), 10_000);
  }
  startStream(); // a new EventSource cannot resend Last-Event-ID, so reload everything
  background(reloadAll);
}

const refreshMeSoon = coalesce(refreshMe, 300);
const refreshMyCasesSoon = coalesce(loadMyCases, 300);
const refreshOpenCaseSoon = coalesce(refreshOpenCase, 300);
const refreshDashboardSoon = coalesce(refreshDashboard, 1000);

function onStreamEvent(type, message) {
  if (type === "reset") return background(reloadAll);
  let ev;
  try {
    ev = JSON.parse(message.data);
  } catch {
    return;
  }
  const data = ev.data ?? {};
  const ref = ev.case?.ref;
  const me = myAgentId();
  switch (type) {
    case "offer.created":
      if (me && data.chosen === me) receiveOffer(ev);
      break;
    case "offer.expired": case "offer.declined": case "offer.rescinded": case "assignment.accepted":
      dropOffer(data.offer);
      break;
    case "message.received":
      if (holds(ref) && ref !== state.openRef) {
        state.unread.add(ref);
        announce(`New customer message on ${ref}.`);
      }
      break;
    case "sla.warning": case "sla.breached":
      if (holds(ref)) announce(`${type === "sla.breached" ? "SLA breached" : "SLA at risk"} on ${ref}.`);
      break;
    case "agent.presence":
      if (me && data.agent === me) refreshMeSoon();
      break;
  }
  if (me && (holds(ref) || MY_CASES_EVENTS.has(type))) refreshMyCasesSoon();
  if (state.open && (ref === state.openRef || ev.case_id === state.open.case.id)) refreshOpenCaseSoon();
  if (state.view === "dashboard") refreshDashboardSoon();
}

// ---------------------------------------------------------------- dashboard

async function refreshDashboard() {
  if (!isSupervisor()) return;
  await Promise.all([refreshOverview(), refreshMetrics(), refreshVolume()]);
  $("dash-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

async function refreshOverview() {
  const overview = (state.overview = await get("/api/v1/supervisor/overview"));
  const t = overview.totals;
  $("totals").replaceChildren(...[
    ["Waiting", t.waiting], ["At risk", t.at_risk], ["Breached", t.breached],
    ["Oldest wait", fmtDuration(t.oldest_wait_seconds)],
  ].map(([label, value]) =>
    el("div", { class: "card stat" }, el("dt", { text: label }), el("dd", { text: value ?? "—" }))));
  fillTable($("queues"), [
    ["Line", (q) => q.line], ["Team", (q) => q.team], ["Channel", (q) => q.channel], ["Waiting", (q) => q.waiting],
    ["Oldest wait", (q) => fmtDuration(q.oldest_wait_seconds)], ["At risk", (q) => q.at_risk],
    ["Breached", (q) => q.breached],
  ], overview.queues, "No queued cases.");
  fillTable($("at-risk"), [
    ["Case", (c) => refButton(c.ref)], ["Line", (c) => c.line], ["Team", (c) => c.team],
    ["Channel", (c) => c.channel], ["Status", (c) => statusBadge(c.status)], ["Agent", (c) => c.agent],
    ["Due", (c) => timeEl(c.due)],
    ["SLA", (c) => (c.breached ? badge("breached", "status-failed") : badge("at risk", "status-warning"))],
  ], overview.cases_at_risk, "No cases at risk.");
  fillTable($("agents"), [
    ["Agent", (a) => a.name ?? a.id], ["Presence", (a) => badge(a.presence, `presence-${a.presence}`)],
    ["Load / capacity", (a) => fmtLoad(a.load, a.capacity)],
    ["Cases", (a) => (a.cases?.length ? el("span", { class: "tags" }, ...a.cases.map(refButton)) : null)],
    ["Offers", (a) => a.offers?.length ?? 0],
  ], overview.agents, "No agents.");
  renderTransferOptions();
}

function metricsQuery(format) {
  const params = { from: isoAgo(7 * DAY), to: isoAgo(0), by: $("metrics-by").value };
  return new URLSearchParams(format ? { ...params, format } : params).toString();
}

async function refreshMetrics() {
  const { rows, by } = await get(`/api/v1/reports/metrics?${metricsQuery()}`);
  $("metrics-csv").href = `/api/v1/reports/metrics?${metricsQuery("csv")}`;
  const label = by ?? $("metrics-by").value;
  fillTable($("metrics"), [
    [label[0].toUpperCase() + label.slice(1), (r) => r.key], ["Created", (r) => r.created],
    ["Resolved", (r) => r.resolved], ["Resolution rate", (r) => pct(r.resolution_rate)],
    ["First response (median)", (r) => fmtDuration(r.first_response_median_seconds)],
    ["First response (p90)", (r) => fmtDuration(r.first_response_p90_seconds)],
    ["Resolution (median)", (r) => fmtDuration(r.resolution_median_seconds)],
    ["CSAT", (r) => (r.csat_average == null ? null : `${r.csat_average.toFixed(2)} (${r.csat_responses})`)],
  ], rows, "No cases in the last 7 days.");
}

async function refreshVolume() {
  const query = new URLSearchParams({ from: isoAgo(DAY), to: isoAgo(0), bucket: "hour" });
  const { buckets } = await get(`/api/v1/reports/volume?${query}`);
  const label = (b) => `${String(new Date(b.start).getHours()).padStart(2, "0")}:00`;
  drawChart($("chart-volume"), "bar", buckets.map((b) => ({ label: label(b), value: b.created })), String);
  drawChart($("chart-response"), "line",
    buckets.map((b) => ({ label: label(b), value: b.first_response_median_seconds })), fmtDuration);
}

// ---------------------------------------------------------------- charts

const CHART = { width: 640, height: 220, left: 56, right: 12, top: 14, bottom: 28 };

function drawChart(target, kind, points, format) {
  const { width, height, left, right, top, bottom } = CHART;
  const values = points.map((p) => p.value).filter((v) => v != null);
  if (!values.length) {
    const empty = { x: width / 2, y: height / 2, class: "empty", "text-anchor": "middle" };
    return target.replaceChildren(svg("text", empty, "No data"));
  }
  const max = Math.max(1, ...values);
  const step = (width - left - right) / points.length;
  const x = (i) => left + i * step + step / 2;
  const y = (v) => height - bottom - (v / max) * (height - top - bottom);
  const every = Math.ceil(points.length / 8);
  target.replaceChildren(
    svg("line", { class: "grid", x1: left, x2: width - right, y1: top, y2: top }),
    svg("line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }),
    svg("text", { class: "tick", x: left - 6, y: top + 4, "text-anchor": "end" }, format(max)),
    svg("text", { class: "tick", x: left - 6, y: height - bottom, "text-anchor": "end" }, format(0)),
    ...points.map((p, i) => i % every === 0 &&
      svg("text", { class: "tick", x: x(i), y: height - 8, "text-anchor": "middle" }, p.label)),
    ...(kind === "bar" ? bars(points, x, y, step, format) : line(points, x, y, format)));
}

function bars(points, x, y, step, format) {
  const base = y(0);
  return points.map((p, i) => svg("rect", {
    class: "bar", x: x(i) - step * 0.4, width: step * 0.8, y: y(p.value ?? 0), height: base - y(p.value ?? 0),
  }, svg("title", {}, `${p.label}: ${format(p.value ?? 0)}`)));
}

function line(points, x, y, format) {
  let d = "";
  let penDown = false;
  points.forEach((p, i) => {
    if (p.value != null) d += `${penDown ? "L" : "M"}${x(i).toFixed(1)},${y(p.value).toFixed(1)}`;
    penDown = p.value != null;
  });
  const dots = points.map((p, i) => p.value != null && svg("circle", { class: "dot", cx: x(i), cy: y(p.value), r: 3 },
    svg("title", {}, `${p.label}: ${format(p.value)}`)));
  return [svg("path", { class: "line", d }), ...dots];
}

// ---------------------------------------------------------------- wiring

function submitOnCtrlEnter(event) {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    event.target.form.requestSubmit();
  }
}

function init() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", (e) => act(e.currentTarget, async () => {
    await post("/api/v1/auth/logout");
    showLogin();
  }));
  $("presence").addEventListener("change", changePresence);
  $("error-dismiss").addEventListener("click", clearError);
  $("tab-work").addEventListener("click", () => showView("work"));
  $("tab-dashboard").addEventListener("click", () => showView("dashboard"));
  $("tabs").addEventListener("keydown", tabKeys);
  $("open-form").addEventListener("submit", (e) => {
    e.preventDefault();
    openCase($("open-ref").value.toUpperCase());
  });
  $("reply-form").addEventListener("submit", sendReply);
  $("note-form").addEventListener("submit", addNote);
  $("reply-text").addEventListener("keydown", submitOnCtrlEnter);
  $("note-text").addEventListener("keydown", submitOnCtrlEnter);
  $("resolve").addEventListener("click", (e) => caseAction(e.currentTarget, "status", { status: "resolved" }));
  $("close").addEventListener("click", (e) => caseAction(e.currentTarget, "status", { status: "closed" }));
  $("escalate").addEventListener("click", (e) =>
    caseAction(e.currentTarget, "escalate", { reason: reasonOr("escalated from console") }, clearReason));
  $("reopen").addEventListener("click", (e) =>
    caseAction(e.currentTarget, "reopen", { reason: reasonOr("reopened from console") }, clearReason));
  $("transfer-form").addEventListener("submit", transfer);
  $("transfer-kind").addEventListener("change", renderTransferOptions);
  $("metrics-by").addEventListener("change", () => background(refreshMetrics));
  setInterval(tickCountdowns, 1000);
  boot();
}

init();

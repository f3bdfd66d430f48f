// The mailhost web UI. It uses only the REST API (/api/openapi.json) and its event
// stream, builds every element with textContent (never innerHTML with mail data), and
// shows HTML bodies only in a sandboxed iframe whose source the server serves under a
// Content-Security-Policy that runs no script.
"use strict";

const state = { mailbox: "", search: "", offset: 0, limit: 50, total: 0, selected: null,
                rows: [], loading: false, again: false, part: "text" };
const $ = (id) => document.getElementById(id);

async function api(path, options) {
  const response = await fetch(path, Object.assign({ cache: "no-store" }, options || {}));
  const type = response.headers.get("content-type") || "";
  const body = type.startsWith("application/json") ? await response.json() : await response.text();
  if (!response.ok) {
    throw new Error((body && body.error) || response.statusText);
  }
  return body;
}

function jsonRequest(method, body) {
  return { method, headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
}

let statusTimer = null;
function say(text, error) {
  const el = $("status");
  el.textContent = text;
  el.className = "shown" + (error ? " error" : "");
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => { el.className = ""; }, error ? 6000 : 2500);
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function when(iso) {
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

// -- search -------------------------------------------------------------------------

const PREFIXES = { "from:": "sender", "to:": "recipient", "subject:": "subject",
                   "body:": "body", "after:": "since", "since:": "since", "before:": "before" };

function queryString(withPaging) {
  const params = new URLSearchParams();
  if (state.mailbox) params.set("mailbox", state.mailbox);
  const words = [];
  for (const token of state.search.match(/(?:[^\s"]+|"[^"]*")+/g) || []) {
    const lower = token.toLowerCase();
    const prefix = Object.keys(PREFIXES).find((p) => lower.startsWith(p) && token.length > p.length);
    const value = prefix ? token.slice(prefix.length) : token;
    const clean = value.replace(/^"|"$/g, "");
    if (prefix) params.set(PREFIXES[prefix], clean); else words.push(clean);
  }
  if (words.length) params.set("text", words.join(" "));
  if (withPaging) {
    params.set("limit", String(state.limit));
    params.set("offset", String(state.offset));
  }
  return params.toString();
}

function filtered() {
  return Boolean(state.mailbox || state.search.trim());
}

// -- the list -----------------------------------------------------------------------

async function loadMessages() {
  if (state.loading) { state.again = true; return; }
  state.loading = true;
  try {
    const page = await api("/api/messages?" + queryString(true));
    state.rows = page.messages;
    state.total = page.total;
    renderList();
  } catch (e) {
    say("Could not list messages: " + e.message, true);
  } finally {
    state.loading = false;
    if (state.again) { state.again = false; loadMessages(); }
  }
}

function row(summary) {
  const li = el("li");
  li.dataset.id = summary.id;
  if (summary.id === state.selected) li.classList.add("selected");
  li.appendChild(el("span", "when", when(summary.received)));
  li.appendChild(el("span", "subject", summary.subject || "(no subject)"));
  li.appendChild(el("span", "who", (summary.from || summary.sender || "") + " \u2192 " + summary.mailbox));
  li.addEventListener("click", () => openMessage(summary.id));
  return li;
}

function renderList() {
  const list = $("messages");
  list.replaceChildren(...state.rows.map(row));
  renderCount();
}

function renderCount() {
  const first = state.total ? state.offset + 1 : 0;
  const last = Math.min(state.offset + state.rows.length, state.total);
  $("count").textContent = state.total === 1 ? "1 message"
    : first + "\u2013" + last + " of " + state.total + " messages";
  $("prev").disabled = state.offset === 0;
  $("next").disabled = state.offset + state.limit >= state.total;
}

function arrived(summary) {
  addMailbox(summary.mailbox);
  if (filtered() || state.offset !== 0) { loadMessages(); return; }
  if (state.rows.some((r) => r.id === summary.id)) return;
  state.rows.unshift(summary);
  state.total += 1;
  const list = $("messages");
  list.insertBefore(row(summary), list.firstChild);
  if (state.rows.length > state.limit) {
    state.rows.pop();
    list.removeChild(list.lastChild);
  }
  renderCount();
}

function removed(ids) {
  if (ids.includes(state.selected)) closeMessage();
  loadMessages();
}

// -- mailboxes ----------------------------------------------------------------------

const known = new Set();
function addMailbox(address) {
  if (known.has(address)) return;
  known.add(address);
  const select = $("mailbox");
  const option = el("option", null, address);
  option.value = address;
  select.appendChild(option);
}

async function loadMailboxes() {
  try {
    const result = await api("/api/mailboxes");
    result.mailboxes.forEach(addMailbox);
  } catch (e) {
    say("Could not list mailboxes: " + e.message, true);
  }
}

// -- one message --------------------------------------------------------------------

async function openMessage(id) {
  state.selected = id;
  for (const li of $("messages").children) li.classList.toggle("selected", li.dataset.id === id);
  let message;
  try {
    message = await api("/api/messages/" + encodeURIComponent(id));
  } catch (e) {
    say("Could not open the message: " + e.message, true);
    return;
  }
  if (state.selected !== id) return;
  const s = message.summary;
  $("view").hidden = false;
  $("view").dataset.id = id;
  $("subject").textContent = s.subject || "(no subject)";
  $("from").textContent = s.from || s.sender || "";
  $("to").textContent = s.to.join(", ");
  $("box").textContent = s.mailbox + " / " + s.folder;
  $("received").textContent = when(s.received);
  $("download").href = "/api/messages/" + encodeURIComponent(id) + "/raw?download=1";
  $("text").textContent = message.text !== null ? message.text : "(no text part)";
  const attachments = $("attachments");
  attachments.replaceChildren(...message.attachments.map((a) => {
    const li = el("li");
    const link = el("a", "attachment", (a.filename || a.content_type) + " (" + a.size + " bytes)");
    link.href = a.url;
    link.setAttribute("download", a.filename || "");
    li.appendChild(link);
    return li;
  }));
  const headers = $("headers").tBodies[0];
  headers.replaceChildren(...message.headers.map((h) => {
    const tr = el("tr");
    tr.appendChild(el("td", null, h.name));
    tr.appendChild(el("td", null, h.value));
    return tr;
  }));
  $("raw").textContent = "";
  const frame = $("html-frame");
  frame.dataset.src = message.html !== null ? "/api/messages/" + encodeURIComponent(id) + "/html" : "";
  frame.removeAttribute("src");
  document.querySelector('.subtab[data-part="html"]').disabled = message.html === null;
  showPart(message.html !== null && message.text === null ? "html" : state.part === "html" && message.html === null ? "text" : state.part);
}

function closeMessage() {
  state.selected = null;
  $("view").hidden = true;
}

async function showPart(part) {
  state.part = part;
  for (const b of document.querySelectorAll(".subtab")) b.classList.toggle("active", b.dataset.part === part);
  $("text").hidden = part !== "text";
  $("headers").hidden = part !== "headers";
  $("raw").hidden = part !== "raw";
  const frame = $("html-frame");
  frame.hidden = part !== "html";
  if (part === "html" && frame.dataset.src && frame.getAttribute("src") !== frame.dataset.src) {
    frame.setAttribute("src", frame.dataset.src);
  }
  if (part === "raw" && !$("raw").textContent && state.selected) {
    try {
      $("raw").textContent = await api("/api/messages/" + encodeURIComponent(state.selected) + "/raw");
    } catch (e) {
      say("Could not load the source: " + e.message, true);
    }
  }
}

async function deleteSelected() {
  const id = state.selected;
  if (!id) return;
  try {
    await api("/api/messages/" + encodeURIComponent(id), { method: "DELETE" });
    closeMessage();
    say("Deleted.");
  } catch (e) {
    say("Could not delete: " + e.message, true);
  }
}

async function purge() {
  if (!confirm(filtered() ? "Delete every message that matches?" : "Delete every message?")) return;
  try {
    const result = await api("/api/messages?" + queryString(false), { method: "DELETE" });
    closeMessage();
    say("Deleted " + result.deleted + " message(s).");
  } catch (e) {
    say("Could not delete: " + e.message, true);
  }
}

async function release(event) {
  event.preventDefault();
  const id = state.selected;
  if (!id) return;
  const body = { host: $("release-host").value.trim(), port: Number($("release-port").value) };
  const to = $("release-to").value.split(/[\s,;]+/).filter(Boolean);
  if (to.length) body.recipients = to;
  try {
    const result = await api("/api/messages/" + encodeURIComponent(id) + "/release", jsonRequest("POST", body));
    say("Released to " + result.released + ".");
  } catch (e) {
    say("Release failed: " + e.message, true);
  }
}

// -- queue and faults ---------------------------------------------------------------

async function loadQueue() {
  let result;
  try {
    result = await api("/api/queue");
  } catch (e) {
    say("Could not list the queue: " + e.message, true);
    return;
  }
  $("queue").replaceChildren(...result.messages.map((m) => {
    const tr = el("tr");
    tr.appendChild(el("td", null, m.id));
    tr.appendChild(el("td", null, m.sender || "<>"));
    tr.appendChild(el("td", null, m.recipients.map((r) =>
      r.address + " (" + r.status + (r.last_error ? ": " + r.last_error : "") + ")").join(", ")));
    tr.appendChild(el("td", null, when(m.arrival)));
    tr.appendChild(el("td", null, String(m.size)));
    return tr;
  }));
  $("queue-empty").hidden = result.messages.length > 0;
}

async function loadFaults() {
  let result;
  try {
    result = await api("/api/faults");
  } catch (e) {
    say("Could not list faults: " + e.message, true);
    return;
  }
  $("faults-off").hidden = result.enabled;
  for (const control of $("fault-form").elements) control.disabled = !result.enabled;
  $("faults").replaceChildren(...result.faults.map((f) => el("li", null, f.description)));
  $("faults-none").hidden = result.faults.length > 0;
}

async function addFault(event) {
  event.preventDefault();
  const body = { protocol: $("fault-protocol").value, action: $("fault-action").value,
                 command: $("fault-command").value.trim() };
  const number = (id) => $(id).value === "" ? null : Number($(id).value);
  if (number("fault-code") !== null) body.code = number("fault-code");
  if ($("fault-message").value) body.message = $("fault-message").value;
  if ($("fault-match").value) body.match = $("fault-match").value;
  body.times = number("fault-times");
  if (number("fault-seconds") !== null) body.seconds = number("fault-seconds");
  try {
    await api("/api/faults", jsonRequest("POST", body));
    say("Fault added.");
  } catch (e) {
    say("Could not add the fault: " + e.message, true);
  }
  loadFaults();
}

async function clearFaults() {
  try {
    const result = await api("/api/faults", { method: "DELETE" });
    say("Cleared " + result.cleared + " fault(s).");
  } catch (e) {
    say("Could not clear faults: " + e.message, true);
  }
  loadFaults();
}

function showPanel(name) {
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.panel === name);
  for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== "panel-" + name;
  if (name === "queue") loadQueue();
  if (name === "faults") loadFaults();
}

// -- live updates -------------------------------------------------------------------

function listen() {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    $("live").textContent = "live";
    $("live").classList.add("on");
    loadMessages();  // catch up on anything missed while disconnected
  });
  source.addEventListener("error", () => {
    $("live").textContent = "reconnecting";
    $("live").classList.remove("on");
  });
  source.addEventListener("message", (event) => arrived(JSON.parse(event.data)));
  source.addEventListener("deleted", (event) => removed(JSON.parse(event.data).ids));
  source.addEventListener("purged", () => removed([state.selected]));
}

// -- wiring -------------------------------------------------------------------------

function start() {
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showPanel(b.dataset.panel));
  for (const b of document.querySelectorAll(".subtab")) b.addEventListener("click", () => showPart(b.dataset.part));
  let typing = null;
  $("search").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.search = $("search").value; state.offset = 0; loadMessages(); }, 250);
  });
  $("mailbox").addEventListener("change", () => { state.mailbox = $("mailbox").value; state.offset = 0; loadMessages(); });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadMessages(); });
  $("next").addEventListener("click", () => { state.offset += state.limit; loadMessages(); });
  $("purge").addEventListener("click", purge);
  $("delete").addEventListener("click", deleteSelected);
  $("release-form").addEventListener("submit", release);
  $("queue-refresh").addEventListener("click", loadQueue);
  $("fault-form").addEventListener("submit", addFault);
  $("faults-clear").addEventListener("click", clearFaults);
  loadMailboxes();
  loadMessages();
  listen();
}

start();

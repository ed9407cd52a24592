// The Warren dashboard: reads the node's local API and its live events, and acts through
// the same API (with the token the node put in this page). No framework, no build step.
"use strict";

const NANO = 1e9;
const token = document.querySelector('meta[name="warren-token"]').content;
const state = { offers: [], status: null, throughput: [], earnings: [] };

const $ = (id) => document.getElementById(id);
const wrn = (nano) => (nano / NANO).toLocaleString(undefined, { maximumFractionDigits: 9 }) + " WRN";
const short = (id) => (id ? "…" + id.slice(-8) : "");
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function duration(s) {
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function showError(message) {
  const e = $("error");
  e.textContent = message || "";
  e.hidden = !message;
}

async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!res.ok) {
    const msg = data && data.error ? data.error.message : res.status + " " + text;
    throw new Error(msg);
  }
  return data;
}

// Views: the hash picks one; every view is in the page, the others hidden.
function showView() {
  const name = (location.hash || "#consumer").slice(1);
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== name;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}
window.addEventListener("hashchange", showView);

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function renderOffers() {
  const country = $("f-country").value;
  const maxPrice = parseFloat($("f-price").value);
  const kind = $("f-kind").value;
  const body = $("offers").querySelector("tbody");
  body.replaceChildren();
  const shown = state.offers
    .filter((o) => !country || o.country === country)
    .filter((o) => isNaN(maxPrice) || o.price_per_gib <= maxPrice * NANO)
    .filter((o) => !kind || o.ip_kind === kind)
    .sort((a, b) => a.country.localeCompare(b.country) || a.price_per_gib - b.price_per_gib);
  for (const o of shown) {
    const row = document.createElement("tr");
    row.dataset.provider = o.provider;
    row.dataset.country = o.country;
    cell(row, o.country);
    cell(row, short(o.provider), "mono").title = o.provider;
    cell(row, (o.price_per_gib / NANO).toString());
    cell(row, (o.price_per_hour / NANO).toString());
    cell(row, o.ip_kind);
    const b = document.createElement("button");
    b.type = "button";
    b.className = "connect";
    b.textContent = "Connect";
    b.setAttribute("aria-label", "Connect through " + o.country + " provider " + short(o.provider));
    b.addEventListener("click", () => connect(o.provider, b));
    row.appendChild(document.createElement("td")).appendChild(b);
    body.appendChild(row);
  }
  $("offers-caption").textContent = shown.length + " of " + state.offers.length + " offers this node has seen and verified";
  // Country choices follow what is offered.
  const select = $("f-country");
  const have = new Set([...select.options].map((o) => o.value));
  for (const c of [...new Set(state.offers.map((o) => o.country))].sort()) {
    if (!have.has(c)) select.add(new Option(c, c));
  }
  renderCountries();
}

function renderCountries() {
  const by = new Map();
  for (const o of state.offers) {
    const e = by.get(o.country) || { n: 0, cheapest: Infinity };
    e.n++;
    e.cheapest = Math.min(e.cheapest, o.price_per_gib);
    by.set(o.country, e);
  }
  const body = $("countries").querySelector("tbody");
  body.replaceChildren();
  for (const [c, e] of [...by].sort()) {
    const row = document.createElement("tr");
    cell(row, c);
    cell(row, String(e.n));
    cell(row, String(e.cheapest / NANO));
    body.appendChild(row);
  }
}

async function connect(provider, button) {
  showError("");
  button.disabled = true;
  button.textContent = "Connecting…";
  try {
    await api("POST", "/api/v1/session", { provider });
    await refresh();
  } catch (e) {
    showError("Could not connect: " + e.message);
  } finally {
    button.disabled = false;
    button.textContent = "Connect";
  }
}

function renderStatus(s) {
  state.status = s;
  $("node").textContent = "node " + short(s.node_id) + " · " + s.peers + " peers · " + s.offers + " offers";
  const sess = s.session;
  $("session-details").hidden = !sess;
  $("disconnect").hidden = !sess;
  if (sess) {
    $("session-state").textContent = sess.state === "open" ? "Connected." : "Reconnecting…";
    $("s-provider").textContent = short(sess.provider);
    $("s-provider").title = sess.provider;
    $("s-country").textContent = sess.country;
    $("s-price").textContent = sess.price_per_gib / NANO + " WRN/GiB, " + sess.price_per_hour / NANO + " WRN/hour";
    $("s-bytes").textContent = bytes(sess.bytes_up) + " up, " + bytes(sess.bytes_down) + " down in " + duration(sess.duration_secs);
    $("s-spent").textContent = wrn(sess.spent);
    $("s-promised").textContent = wrn(sess.promised);
  } else {
    $("session-state").textContent = "Not connected: pick an offer below.";
  }
  const proxies = [];
  if (s.socks) proxies.push("SOCKS5 on " + s.socks);
  if (s.http_proxy) proxies.push("HTTP proxy on " + s.http_proxy);
  $("proxies").textContent = proxies.join(" · ");
  $("selling").textContent = s.provider
    ? "Selling in " + s.provider.country + " at " + s.provider.price_per_gib / NANO + " WRN/GiB and " +
      s.provider.price_per_hour / NANO + " WRN/hour (" + s.provider.ip_kind + "); serving " + s.serving + " session(s)."
    : "Not selling. Start the node with --provide --price-gib WRN --price-hour WRN to sell bandwidth.";
  $("sell-stop").disabled = !s.provider;
  if (s.provider && !state.sellFilled) {
    state.sellFilled = true;
    $("sell-gib").value = s.provider.price_per_gib / NANO;
    $("sell-hour").value = s.provider.price_per_hour / NANO;
    $("sell-country").value = s.provider.country;
  }
  $("n-id").textContent = s.node_id;
  $("n-peers").textContent = String(s.peers);
  $("n-nat").textContent = s.reachability;
  $("n-addrs").textContent = s.listen_addrs.join("\n");
  $("n-uptime").textContent = duration(s.uptime_secs);
}

function renderServed(list) {
  const body = $("served").querySelector("tbody");
  body.replaceChildren();
  for (const s of list) {
    const row = document.createElement("tr");
    // Anonymised: a short tag of the consumer, never more.
    cell(row, short(s.consumer), "mono");
    cell(row, bytes(s.bytes_up));
    cell(row, bytes(s.bytes_down));
    cell(row, String(s.flows));
    cell(row, duration(s.duration_secs));
    cell(row, wrn(s.earned));
    cell(row, wrn(s.paid));
    body.appendChild(row);
  }
  if (!list.length) {
    const row = document.createElement("tr");
    cell(row, "No sessions now.").colSpan = 7;
    body.appendChild(row);
  }
}

function renderWallet(w) {
  $("w-escrow").textContent = wrn(w.escrow);
  $("w-balance").textContent = wrn(w.balance);
  $("e-unsettled").textContent = wrn(w.earned_unsettled);
  $("e-settled").textContent = wrn(w.earned_settled);
  state.earnings.push(w.earned_settled + w.earned_unsettled);
  if (state.earnings.length > 120) state.earnings.shift();
  chart($("earnings"), [state.earnings], ["#1b7f4b"]);
}

// A small line chart on a canvas: each series scaled to the largest value shown.
function chart(canvas, series, colours) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...series.flat());
  series.forEach((points, i) => {
    ctx.strokeStyle = colours[i];
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((v, x) => {
      const px = points.length < 2 ? 0 : (x / (points.length - 1)) * (w - 4) + 2;
      const py = h - 4 - (v / max) * (h - 8);
      if (x === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
    });
    ctx.stroke();
  });
}

// NANO-exact conversion of a decimal WRN text (at most 9 decimals), as the CLI does.
function toNano(text) {
  const m = /^(\d+)(?:\.(\d{0,9}))?$/.exec(text.trim());
  if (!m) throw new Error("prices are decimal WRN with at most 9 decimals, not " + JSON.stringify(text));
  return Number(m[1]) * NANO + Number((m[2] || "").padEnd(9, "0"));
}

function renderPolicy(p) {
  const caps = "At most " + p.max_sessions + " sessions, " + p.max_flows_per_session + " flows each" +
    (p.max_bytes_per_session ? ", " + bytes(p.max_bytes_per_session) + " a session" : "") + ".";
  $("policy-caps").textContent = caps;
  const body = $("policy").querySelector("tbody");
  body.replaceChildren();
  let n = 0;
  const add = (action, what) => {
    const row = document.createElement("tr");
    cell(row, String(++n));
    cell(row, action);
    cell(row, what);
    body.appendChild(row);
  };
  for (const r of p.rules) {
    add(r.action, [r.cidr, r.domain_suffix && "*." + r.domain_suffix, r.ports && "ports " + r.ports].filter(Boolean).join(", ") || "everything");
  }
  for (const a of p.allow) add("allow", a + " (--exit-allow)");
  for (const d of p.default_deny) add("deny", d + " (default)");
  add("allow", "everything else");
}

// The wallet asks the hub, so it is read on changes and every 10 s, not on every tick.
let walletRead = 0;

async function refresh(withWallet = true) {
  try {
    const [status, offers, served, wallet] = await Promise.all([
      api("GET", "/api/v1/status"),
      api("GET", "/api/v1/offers?service=proxy"),
      api("GET", "/api/v1/provider/sessions"),
      withWallet || Date.now() - walletRead > 10000
        ? api("GET", "/api/v1/wallet").then((w) => { walletRead = Date.now(); return w; }).catch(() => null)
        : Promise.resolve(null),
    ]);
    state.offers = offers;
    renderStatus(status);
    renderOffers();
    renderServed(served);
    if (wallet) renderWallet(wallet);
    if (!state.policy) {
      state.policy = await api("GET", "/api/v1/provider/policy");
      renderPolicy(state.policy);
    }
  } catch (e) {
    showError("The node did not answer: " + e.message);
  }
}

function listen() {
  const events = new EventSource("/api/v1/events");
  events.addEventListener("throughput", (m) => {
    const t = JSON.parse(m.data);
    state.throughput.push([t.consumer_down + t.provider_down, t.consumer_up + t.provider_up]);
    if (state.throughput.length > 60) state.throughput.shift();
    chart($("throughput"), [state.throughput.map((p) => p[0]), state.throughput.map((p) => p[1])], ["#2457c5", "#c56a24"]);
    $("throughput-now").textContent = bytes(t.consumer_down + t.provider_down) + "/s down, " + bytes(t.consumer_up + t.provider_up) + "/s up";
  });
  for (const kind of ["offer_added", "offer_removed", "session_opened", "session_closed"]) {
    events.addEventListener(kind, () => refresh());
  }
  // Payments come many times a second on a busy session: at most one refresh a second for
  // them, and the wallet on its own 10 s rule.
  let paymentSeen = false;
  events.addEventListener("payment", () => { paymentSeen = true; });
  setInterval(() => { if (paymentSeen) { paymentSeen = false; refresh(false); } }, 1000);
}

// Content: the channels this node publishes, follows or holds, and their entries. Names
// and titles are whatever a publisher chose, so they only ever go into the page as text.
const content = {
  channels: [],
  selected: null, // the id of the channel whose entries are shown
  detail: null, // GET /api/v1/channels/{selected}
  fetches: new Map(), // content id -> the last GET /api/v1/content/{id} of a fetch started here
  shown: "", // what the tables show now, so they are rebuilt (losing focus) only on a change
};

const role = (c) => (c.own ? "publisher" : c.following ? "follower" : "held");
const when = (secs) => new Date(secs * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
const contentUrl = (id) => "/content/" + encodeURIComponent(id);
const channelPath = (id) => "/api/v1/channels/" + encodeURIComponent(id);
function kindOf(mediaType) {
  const top = String(mediaType || "").split("/")[0].toLowerCase();
  return ["video", "audio", "image"].includes(top) ? top : "file";
}
// A name for a downloaded file: the title, less what file systems refuse.
function fileName(title) {
  return title.replace(/[\u0000-\u001f\u007f"*/:<>?\\|]+/g, "_").trim().slice(0, 120) || "download";
}

function button(text, cls, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", () => onClick(b));
  return b;
}

function downloadLink(entry, cls) {
  const a = document.createElement("a");
  a.href = contentUrl(entry.id);
  a.download = fileName(entry.title);
  a.textContent = "Download";
  if (cls) a.className = cls;
  return a;
}

function renderChannels() {
  const body = $("channels").querySelector("tbody");
  body.replaceChildren();
  for (const c of content.channels) {
    const row = document.createElement("tr");
    row.dataset.channel = c.id;
    row.dataset.name = c.name;
    row.dataset.role = role(c);
    if (c.id === content.selected) row.setAttribute("aria-current", "true");
    const label = c.name || short(c.id);
    const open = button(c.name || "(no name yet)", "link open-channel", "Show the entries of channel " + label, () => selectChannel(c.id));
    if (!c.name) open.classList.add("muted");
    row.appendChild(document.createElement("td")).appendChild(open);
    cell(row, short(c.id), "mono").title = c.id;
    cell(row, role(c));
    cell(row, String(c.entries));
    cell(row, c.latest ? c.latest.title : "–", "title");
    const act = row.appendChild(document.createElement("td"));
    act.className = "actions";
    if (c.following) act.appendChild(button("Unfollow", "secondary unfollow", "Stop following " + label, (b) => unfollow(c, b)));
    else if (!c.own) act.appendChild(button("Follow", "secondary follow", "Follow " + label, (b) => follow(c.id, b)));
    body.appendChild(row);
  }
  if (!content.channels.length) {
    const row = document.createElement("tr");
    cell(row, "No channels yet: publish one with warren publish, or follow one above.").colSpan = 6;
    body.appendChild(row);
  }
  const n = content.channels.length;
  $("channels-caption").textContent = n + (n === 1 ? " channel" : " channels") + " this node publishes, follows or holds";
}

function fetchCell(td, actions, entry) {
  const s = content.fetches.get(entry.id);
  const failed = s && s.fetch && s.fetch.state === "failed";
  if (entry.held || (s && s.complete)) {
    td.textContent = "yes";
  } else if (s && !failed) {
    const bar = document.createElement("progress");
    bar.max = s.size || 1;
    if (s.size) bar.value = s.have;
    const pct = s.size ? Math.floor((100 * s.have) / s.size) + " %" : "finding peers…";
    bar.setAttribute("aria-label", "Fetching " + entry.title + ": " + pct);
    td.append(bar, " " + pct);
  } else {
    td.textContent = failed ? "no (fetch failed)" : "no";
    if (failed) td.title = s.fetch.error || "no peer has it";
    actions.appendChild(button(failed ? "Retry" : "Fetch", "secondary fetch", "Fetch " + entry.title + " from peers", (b) => fetchEntry(entry.id, b)));
  }
}

function renderEntries() {
  const d = content.detail;
  const table = $("entries");
  const body = table.querySelector("tbody");
  body.replaceChildren();
  table.hidden = !d;
  const about = $("channel-about");
  if (!d) {
    $("channel-h").textContent = "Entries";
    about.textContent = "Pick a channel above to see its entries.";
    return;
  }
  const c = d.channel;
  $("channel-h").textContent = "Entries of " + (c.name ? c.name : "channel " + short(c.id));
  const id = document.createElement("span");
  id.className = "mono";
  id.textContent = c.id;
  about.replaceChildren(
    c.own ? "Published by this node; others follow it by its id, " : c.following ? "Followed by this node: " : "Held by this node, not followed: ",
    id,
    "."
  );
  for (const e of [...d.entries].sort((a, b) => b.seq - a.seq)) {
    const row = document.createElement("tr");
    row.dataset.content = e.id;
    cell(row, e.title, "title");
    cell(row, e.media_type, "mono nowrap");
    cell(row, bytes(e.size), "nowrap");
    cell(row, when(e.published_at), "nowrap");
    const held = cell(row, "", "held nowrap");
    const actions = row.appendChild(document.createElement("td"));
    actions.className = "actions";
    const kind = kindOf(e.media_type);
    if (kind === "file") actions.appendChild(downloadLink(e, "button secondary"));
    else {
      const verb = kind === "image" ? "Open" : "Play";
      actions.appendChild(button(verb, "play", verb + " " + e.title, () => openEntry(e)));
    }
    fetchCell(held, actions, e);
    body.appendChild(row);
  }
  if (!d.entries.length) {
    const row = document.createElement("tr");
    cell(row, "No entries yet: they arrive as peers that hold them are found.").colSpan = 6;
    body.appendChild(row);
  }
}

function renderContent() {
  const key = JSON.stringify([content.channels, content.selected, content.detail, [...content.fetches]]);
  if (key === content.shown) return;
  content.shown = key;
  renderChannels();
  renderEntries();
}

async function loadContent() {
  try {
    content.channels = await api("GET", "/api/v1/channels");
    if (content.selected && !content.channels.some((c) => c.id === content.selected)) content.selected = null;
    content.detail = content.selected ? await api("GET", channelPath(content.selected)) : null;
    // Fetches this page saw finish are shown by the entry's own "held" from now on.
    for (const e of content.detail ? content.detail.entries : []) if (e.held) content.fetches.delete(e.id);
    renderContent();
  } catch (e) {
    showError("The node did not answer: " + e.message);
  }
}

// One load at a time; a call during one runs again after it, so no answer is missed.
let contentLoad = null;
let contentAgain = false;
function refreshContent() {
  if (contentLoad) {
    contentAgain = true;
    return contentLoad;
  }
  contentLoad = loadContent().finally(() => {
    contentLoad = null;
    if (contentAgain) {
      contentAgain = false;
      refreshContent();
    }
  });
  return contentLoad;
}

function selectChannel(id) {
  content.selected = id;
  refreshContent();
}

async function follow(id, b) {
  showError("");
  b.disabled = true;
  try {
    const v = await api("POST", channelPath(id) + "/follow");
    $("follow-result").textContent = "Following " + (v.name || short(v.id)) + ": its entries arrive as peers that hold them are found.";
    content.selected = v.id;
    await refreshContent();
    return true;
  } catch (e) {
    showError("Could not follow: " + e.message);
    return false;
  } finally {
    b.disabled = false;
  }
}

async function unfollow(c, b) {
  showError("");
  b.disabled = true;
  try {
    await api("DELETE", channelPath(c.id) + "/follow");
    $("follow-result").textContent = "No longer following " + (c.name || short(c.id)) + "; what this node holds of it stays.";
  } catch (e) {
    showError("Could not unfollow: " + e.message);
    b.disabled = false;
  }
  refreshContent();
}

async function fetchEntry(id, b) {
  showError("");
  b.disabled = true;
  b.textContent = "Starting…";
  try {
    content.fetches.set(id, await api("POST", "/api/v1/content/" + encodeURIComponent(id) + "/fetch"));
    renderContent();
  } catch (e) {
    showError("Could not fetch: " + e.message);
    b.disabled = false;
    b.textContent = "Fetch";
  }
}

// Fetches started here are polled until they end; one that ends brings the entry's new state.
async function pollFetches() {
  const running = [...content.fetches].filter(([, s]) => !s.complete && !(s.fetch && s.fetch.state !== "running"));
  if (!running.length) return;
  let ended = false;
  await Promise.all(running.map(async ([id]) => {
    try {
      const s = await api("GET", "/api/v1/content/" + encodeURIComponent(id));
      content.fetches.set(id, s);
      if (s.complete || (s.fetch && s.fetch.state !== "running")) ended = true;
    } catch (_) { /* the next poll tries again */ }
  }));
  renderContent();
  if (ended) refreshContent();
}

function closeViewer() {
  const box = $("viewer-media");
  for (const m of box.querySelectorAll("video, audio")) {
    // Stops the stream, not just the sound.
    m.pause();
    m.removeAttribute("src");
    m.load();
  }
  box.replaceChildren();
  $("viewer-error").hidden = true;
  $("viewer").hidden = true;
  delete $("viewer").dataset.content;
}

function openEntry(e) {
  closeViewer();
  const kind = kindOf(e.media_type);
  const el = document.createElement(kind === "image" ? "img" : kind);
  if (kind === "image") el.alt = e.title;
  else {
    el.controls = true;
    el.preload = "metadata";
  }
  el.addEventListener("error", () => {
    const err = $("viewer-error");
    err.textContent = "The browser could not " + (kind === "image" ? "show" : "play") + " this " + e.media_type +
      ": it may not decode it, or no peer has it. Download it instead.";
    err.hidden = false;
  });
  el.src = contentUrl(e.id);
  $("viewer-media").appendChild(el);
  $("viewer-title").textContent = e.title;
  $("viewer-meta").textContent = e.media_type + " · " + bytes(e.size);
  const link = $("viewer-download");
  link.href = contentUrl(e.id);
  link.download = fileName(e.title);
  $("viewer").dataset.content = e.id;
  $("viewer").hidden = false;
  $("viewer").scrollIntoView({ block: "nearest" });
  if (kind !== "image") el.play().catch(() => { /* the error handler says why */ });
}

$("viewer-close").addEventListener("click", closeViewer);
$("follow").addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = $("follow-id").value.trim();
  if (id && (await follow(id, $("follow-go")))) $("follow-id").value = "";
});
window.addEventListener("hashchange", () => { if (!$("content").hidden) refreshContent(); });
setInterval(() => { if (!$("content").hidden) refreshContent(); }, 3000);
setInterval(() => { if (!$("content").hidden) pollFetches(); }, 1000);

$("sell").addEventListener("submit", async (e) => {
  e.preventDefault();
  showError("");
  try {
    const body = { price_per_gib: toNano($("sell-gib").value), price_per_hour: toNano($("sell-hour").value) };
    const cc = $("sell-country").value.trim().toUpperCase();
    if (cc) body.country = cc;
    await api("PUT", "/api/v1/provider", body);
  } catch (err) {
    showError("Could not start selling: " + err.message);
  }
  refresh();
});
$("sell-stop").addEventListener("click", async () => {
  try { await api("DELETE", "/api/v1/provider"); } catch (err) { showError(err.message); }
  refresh();
});

$("filters").addEventListener("input", renderOffers);
$("filters").addEventListener("submit", (e) => e.preventDefault());
$("disconnect").addEventListener("click", async () => {
  try { await api("DELETE", "/api/v1/session"); } catch (e) { showError(e.message); }
  refresh();
});
$("settle").addEventListener("click", async () => {
  $("settle").disabled = true;
  try {
    const r = await api("POST", "/api/v1/wallet/settle");
    $("settle-result").textContent = "Settled " + r.paid_promises + " promise(s): " + wrn(r.earned) + " earned, " + wrn(r.fees) + " in fees." + (r.errors.length ? " " + r.errors.join("; ") : "");
  } catch (e) {
    showError("Could not settle: " + e.message);
  } finally {
    $("settle").disabled = false;
    refresh();
  }
});

showView();
refresh();
if (!$("content").hidden) refreshContent();
listen();
setInterval(() => refresh(false), 2000);

// The Plexus operator's console: a single page over the node's chain API (/chain/v1/...).
// Served by the node itself, no third-party code. Amounts are integers of base units (u128) and
// may exceed what a JavaScript number holds exactly, so they are read as strings and added as
// BigInt; nothing here rounds money.
"use strict";

const UNITS_PER_PLX = 1000000n;
const view = document.getElementById("view");
let models = null; // id -> name

// ---- reading the API ----

// Integers of 16 digits or more become strings before JSON.parse (which would round them).
function parseExact(text) {
  return JSON.parse(text.replace(/([\[:,]\s*)(-?\d{16,})(?=\s*[,\]}])/g, '$1"$2"'));
}

async function api(path) {
  const r = await fetch(path, { headers: { accept: "application/json" } });
  const text = await r.text();
  if (!r.ok) {
    let message = text;
    try { message = JSON.parse(text).error.message; } catch (_) { /* not JSON */ }
    const e = new Error(`${path}: ${r.status} ${message}`);
    e.status = r.status;
    throw e;
  }
  return parseExact(text);
}

async function modelNames() {
  if (models) return models;
  models = {};
  try {
    const body = await api("/chain/v1/models?limit=100");
    for (const m of body.models || []) models[m.id] = m.manifest.name;
  } catch (_) { /* names are a nicety */ }
  return models;
}

// ---- formatting ----

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function big(v) { return BigInt(v ?? 0); }
function plx(units) {
  const u = big(units);
  const whole = u / UNITS_PER_PLX, frac = u % UNITS_PER_PLX;
  if (frac === 0n) return `${whole} PLX`;
  return `${whole}.${frac.toString().padStart(6, "0").replace(/0+$/, "")} PLX`;
}
function amount(units) {
  return `<span title="${esc(big(units))} base units">${esc(plx(units))}</span>`;
}
function units(v) { return `<span class="mono">${esc(big(v))}</span>`; }
function short(h) { const s = String(h ?? ""); return s.length > 16 ? `${s.slice(0, 8)}…${s.slice(-6)}` : s; }
function addr(a) { return a ? `<a class="mono" href="#/account/${esc(a)}" title="${esc(a)}">${esc(short(a))}</a>` : '<span class="muted">—</span>'; }
function blockLink(h) { return `<a href="#/block/${esc(h)}">${esc(h)}</a>`; }
function txLink(h) { return `<a class="mono" href="#/tx/${esc(h)}" title="${esc(h)}">${esc(short(h))}</a>`; }
function pill(s) { return `<span class="pill ${esc(s)}">${esc(String(s).replace(/_/g, " "))}</span>`; }
function ago(ms) {
  if (!ms) return "—";
  const s = Math.max(0, (Date.now() - Number(ms)) / 1000);
  if (s < 120) return `${s.toFixed(1)} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}
function card(k, v, id) { return `<div class="card"${id ? ` id="${id}"` : ""}><div class="k">${esc(k)}</div><div class="v">${v}</div></div>`; }
function table(heads, rows, cls = "") {
  const th = heads.map((h) => (h.startsWith("#") ? `<th class="num">${esc(h.slice(1))}</th>` : `<th>${esc(h)}</th>`)).join("");
  const body = rows.length ? rows.join("") : `<tr><td colspan="${heads.length}" class="muted">None.</td></tr>`;
  return `<table class="${cls}"><thead><tr>${th}</tr></thead><tbody>${body}</tbody></table>`;
}
function row(cells, cls = "") { return `<tr class="${cls}">${cells.join("")}</tr>`; }
function td(v) { return `<td>${v}</td>`; }
function num(v) { return `<td class="num">${v}</td>`; }
function versions(v) { return ["consensus", "data", "execution", "network"].map((l) => `${l} v${esc(v?.[l])}`).join(" · "); }
function kindOf(k) {
  if (typeof k === "string") return esc(k);
  const [name, body] = Object.entries(k || {})[0] || ["?", {}];
  const parts = Object.entries(body || {}).map(([a, b]) => `${esc(a)}=${esc(typeof b === "object" ? JSON.stringify(b) : b)}`);
  return `<b>${esc(name)}</b> ${parts.join(", ")}`;
}

// ---- pages ----

async function overview() {
  const [status, supply, upgrades] = await Promise.all([api("/chain/v1/status"), api("/chain/v1/supply"), api("/chain/v1/upgrades")]);
  const totalStake = status.validators.reduce((s, v) => s + big(v.stake), 0n);
  const needed = big(upgrades.readiness_needed_bps);
  const pending = (upgrades.upgrades || []).filter((u) => u.status === "pending");
  return `<h1>Network <span class="muted mono">${esc(status.chain_id)}</span></h1>
  <div class="cards">
    ${card("Finalized height", `<span id="height">${esc(status.finalized_height)}</span>`)}
    ${card("Last block", esc(ago(status.latest_block_time_ms)), "finality")}
    ${card("Epoch", esc(status.epoch))}
    ${card("Validators", esc(status.validators.length))}
    ${card("Bonded by validators", amount(totalStake))}
    ${card("Mempool", `${esc(status.mempool_txs)} txs`)}
    ${card("Supply", amount(supply.total ?? 0))}
    ${card("Supply conserved", supply.conserved ? '<span class="ok">yes</span>' : '<span class="bad">NO</span>')}
  </div>
  <h2>Versions in force</h2>
  <p id="versions">${versions(status.versions)}</p>
  <h2>Pending upgrades</h2>
  ${table(["Layer", "#Version", "#Activation height", "#Deadline", "Readiness"], pending.map((u) => {
    const bps = u.ready_bps_now == null ? null : Number(u.ready_bps_now);
    const bar = bps == null ? "—" : `<div class="bar" title="${bps / 100}% of ${Number(needed) / 100}% needed"><span style="width:${Math.min(100, bps / 100)}%"></span></div> ${(bps / 100).toFixed(1)}% (needs ${(Number(needed) / 100).toFixed(1)}%)`;
    return row([td(esc(u.layer)), num(esc(u.version)), num(esc(u.activation_height)), num(esc(u.deadline_height)), td(bar)]);
  }))}
  <h2>Validators (epoch ${esc(status.epoch)})</h2>
  ${table(["Address", "#Stake", "P2P address"], status.validators.map((v) => row([td(addr(v.address)), num(amount(v.stake)), td(`<span class="mono">${esc(v.p2p_address)}</span>`)])))}
  <h2>This node</h2>
  <p>${addr(status.node.address)} · version ${esc(status.node.version)} · genesis <span class="mono">${esc(short(status.node.genesis_hash))}</span> · binary runs ${esc(Object.entries(status.upgrade_node.supported || {}).map(([layer, r]) => `${layer} v${r.min}–v${r.max}`).join(' · '))}</p>`;
}

async function blocks() {
  const latest = await api("/chain/v1/blocks/latest");
  const top = Number(latest.header.height);
  const heights = [];
  for (let h = top - 1; h >= Math.max(1, top - 19); h--) heights.push(h);
  const rest = await Promise.all(heights.map((h) => api(`/chain/v1/blocks/${h}`).catch(() => null)));
  const list = [latest, ...rest.filter(Boolean)];
  return `<h1>Latest blocks</h1>
  ${table(["#Height", "Hash", "Proposer", "#Txs", "Time", "Versions"], list.map((b) => row([
    num(blockLink(b.header.height)), td(`<a class="mono" href="#/block/${esc(b.hash)}">${esc(short(b.hash))}</a>`), td(addr(b.header.proposer)),
    num(esc(b.txs.length)), td(esc(new Date(Number(b.header.timestamp_ms)).toISOString())), td(`<span class="muted">${versions(b.header.versions)}</span>`),
  ])))}`;
}

async function block(id) {
  const b = await api(`/chain/v1/blocks/${encodeURIComponent(id)}`);
  const h = b.header;
  return `<h1>Block ${esc(h.height)}</h1>
  <div class="cards">
    ${card("Hash", `<span class="mono">${esc(b.hash)}</span>`)}
    ${card("Proposer", addr(h.proposer))}
    ${card("Epoch / view", `${esc(h.epoch)} / ${esc(h.view)}`)}
    ${card("Time", esc(new Date(Number(h.timestamp_ms)).toISOString()))}
  </div>
  <p>Parent ${Number(h.height) > 1 ? blockLink(Number(h.height) - 1) : "genesis"} · next ${blockLink(Number(h.height) + 1)} · state root <span class="mono">${esc(h.state_root)}</span> · ${versions(h.versions)}</p>
  <h2>Transactions</h2>
  ${table(["#", "Hash", "Kind", "Signer", "#Fee"], b.txs.map((t, i) => row([num(i), td(txLink(t.hash)), td(esc(payloadKind(t.tx.tx.payload))), td(addr(t.tx.tx.signer)), num(amount(t.tx.tx.fee))])))}`;
}

function payloadKind(p) { return typeof p === "string" ? p : Object.keys(p || {})[0] || "?"; }

async function tx(hash) {
  const t = await api(`/chain/v1/txs/${encodeURIComponent(hash)}`);
  return `<h1>Transaction</h1>
  <div class="cards">
    ${card("Hash", `<span class="mono">${esc(t.hash)}</span>`)}
    ${card("Block", blockLink(t.height))}
    ${card("Signer", addr(t.tx.tx.signer))}
    ${card("Fee", amount(t.tx.tx.fee))}
  </div>
  <h2>Payload (${esc(payloadKind(t.tx.tx.payload))})</h2><pre>${esc(JSON.stringify(t.tx.tx.payload, null, 2))}</pre>
  <h2>Result</h2><pre>${esc(JSON.stringify(t.result, null, 2))}</pre>`;
}

async function account(address) {
  const [a, txs, provider] = await Promise.all([
    api(`/chain/v1/accounts/${encodeURIComponent(address)}`),
    api(`/chain/v1/accounts/${encodeURIComponent(address)}/txs`),
    api(`/chain/v1/providers/${encodeURIComponent(address)}`).catch((e) => (e.status === 404 ? null : Promise.reject(e))),
  ]);
  return `<h1>Account <span class="mono">${esc(a.address)}</span></h1>
  <div class="cards">
    ${card("Balance", amount(a.balance), "balance")}
    ${card("Bonded", amount(a.bonded))}
    ${card("Unbonding", amount(a.unbonding))}
    ${card("Nonce", esc(a.nonce))}
  </div>
  ${provider ? `<p>A provider in ${esc(provider.region)} — <a href="#/provider/${esc(a.address)}">provider details</a> · <a href="#/earnings/${esc(a.address)}">earnings explained</a></p>` : ""}
  <p><a href="#/sessions/client/${esc(a.address)}">Sessions it paid for</a> · <a href="#/sessions/provider/${esc(a.address)}">sessions it served</a></p>
  <h2>Transactions (newest first, up to block ${esc(txs.height)})</h2>
  ${table(["#Block", "Hash", "Kind", "From", "To / provider"], txs.txs.map((t) => row([num(blockLink(t.height)), td(txLink(t.hash)), td(esc(t.kind)), td(addr(t.signer)), td(addr(t.counterparty))])), "txs")}`;
}

function prices(list, names) {
  return (list || []).map((p) => `${esc(names[p.model] || short(p.model))}: ${amount(p.input_per_1k)} in / ${amount(p.output_per_1k)} out per 1k`).join("<br>");
}

async function providers() {
  const [body, names] = await Promise.all([api("/chain/v1/providers?limit=100"), modelNames()]);
  return `<h1>Providers</h1>
  ${table(["Address", "Region", "Hardware", "Models and prices", "#Stake", "#Convicted", "#Acquitted", "#Slashed"], body.providers.map((p) => row([
    td(`<a class="mono" href="#/provider/${esc(p.address)}">${esc(short(p.address))}</a>`), td(esc(p.region)), td(esc(p.hardware)), td(prices(p.prices, names)),
    num(amount(p.bonded)), num(esc(p.stats.convicted)), num(esc(p.stats.acquitted)), num(amount(p.stats.slashed)),
  ])))}
  ${body.next ? '<p class="muted">More providers than shown (the first 100).</p>' : ""}`;
}

async function provider(address) {
  const [p, names] = await Promise.all([api(`/chain/v1/providers/${encodeURIComponent(address)}`), modelNames()]);
  const challenges = p.challenges || [];
  return `<h1>Provider <span class="mono">${esc(address)}</span></h1>
  <div class="cards">
    ${card("Registered", p.registered ? '<span class="ok">yes</span>' : '<span class="bad">no</span>')}
    ${card("Region", esc(p.region ?? "—"))}
    ${card("Stake", amount(p.bonded ?? 0))}
    ${card("Faults (convicted)", esc(p.stats?.convicted ?? 0))}
    ${card("Slashed", amount(p.stats?.slashed ?? 0))}
  </div>
  <p>Endpoint <span class="mono">${esc(p.endpoint ?? "—")}</span> · hardware ${esc(p.hardware ?? "—")} · <a href="#/earnings/${esc(address)}">earnings explained</a></p>
  <h2>Models and prices</h2><p>${prices(p.prices, names) || "—"}</p>
  <h2>Audits</h2>
  ${table(["Challenge", "Status", "Details"], challenges.map((c) => row([td(esc(c.id)), td(pill(c.status ?? "")), td(`<span class="mono">${esc(JSON.stringify(c))}</span>`)])))}`;
}

async function sessions(role, address) {
  const q = role && address ? `&${role}=${encodeURIComponent(address)}` : "";
  const [body, names] = await Promise.all([api(`/chain/v1/sessions?limit=100${q}`), modelNames()]);
  return `<h1>Sessions${role ? ` of ${esc(role)} ${addr(address)}` : ""}</h1>
  ${table(["Id", "Status", "Client", "Provider", "Model", "#Deposit", "#Paid out", "#Remaining", "#Tokens in/out", "#Expires"], body.sessions.map((s) => row([
    td(`<span class="mono" title="${esc(s.id)}">${esc(short(s.id))}</span>`), td(pill(s.status)), td(addr(s.client)), td(addr(s.provider)), td(esc(names[s.model] || short(s.model))),
    num(amount(s.deposit)), num(amount(s.settled_amount)), num(amount(s.remaining)), num(`${esc(s.settled_input_tokens)} / ${esc(s.settled_output_tokens)}`), num(blockLink(s.expiry_height)),
  ])))}`;
}

async function earnings(address) {
  const [e, names] = await Promise.all([api(`/chain/v1/providers/${encodeURIComponent(address)}/earnings`), modelNames()]);
  // Check the report adds up before showing it: per-session nets sum to the total, per-day nets
  // sum to the total, and each session's net is what it paid less the fee.
  const sessionNet = e.sessions.reduce((s, r) => s + big(r.net), 0n);
  const dayNet = e.days.reduce((s, d) => s + big(d.net), 0n);
  const each = e.sessions.every((r) => big(r.gross) - big(r.fee) === big(r.net) && (r.tokens_cost == null || big(r.tokens_cost) === big(r.gross)));
  const allShown = e.sessions.length === Number(e.total.sessions);
  const adds = each && dayNet === big(e.total.net) && (!allShown || sessionNet === big(e.total.net));
  return `<h1>Earnings of <span class="mono">${esc(address)}</span></h1>
  <div class="explain">Each settled claim pays the provider out of the client's escrow: <b>tokens × price per 1k</b> (input and output at the prices fixed when the session opened) is what the session paid; the <b>protocol fee</b> goes to the treasury; the rest is <b>net</b>, credited to the provider's balance. Counted from the chain's own settlement events up to block ${esc(e.height)}.</div>
  <div class="cards">
    ${card("Net earned", `<span id="net-total" data-units="${esc(big(e.total.net))}">${esc(plx(e.total.net))}</span>`)}
    ${card("Paid by sessions", amount(e.total.gross))}
    ${card("Protocol fees", amount(e.total.fee))}
    ${card("Settled (closed sessions)", `<span id="net-settled" data-units="${esc(big(e.settled.net))}">${esc(plx(e.settled.net))}</span>`)}
    ${card("Pending (open sessions)", `<span id="net-pending" data-units="${esc(big(e.pending.net))}">${esc(plx(e.pending.net))}</span>`)}
    ${card("Still in open escrow", amount(e.pending_escrow))}
  </div>
  <p id="adds-up" data-ok="${adds}" class="${adds ? "ok" : "bad"}">${adds ? "✓ Sessions and days add up to the total, to the base unit." : "✗ The report does not add up: per-session or per-day figures differ from the total."} ${esc(e.total.sessions)} sessions, ${esc(e.total.claims)} claims.</p>
  <h2>Per session</h2>
  ${table(["Session", "Status", "Model", "#Input tokens × price/1k", "#Output tokens × price/1k", "#= Tokens cost", "#Paid (base units)", "#− Fee", "#= Net", "#Claims"], e.sessions.map((r) => row([
    td(`<span class="mono" title="${esc(r.id)}">${esc(short(r.id))}</span>`), td(pill(r.status)), td(esc(names[r.model] || short(r.model))),
    num(`${esc(r.input_tokens)} × ${units(r.input_per_1k)}`), num(`${esc(r.output_tokens)} × ${units(r.output_per_1k)}`), num(r.tokens_cost == null ? "—" : units(r.tokens_cost)),
    num(units(r.gross)), num(units(r.fee)), num(`<b>${units(r.net)}</b>`), num(esc(r.claims)),
  ])).concat([row([td("Total"), td(""), td(""), td(""), td(""), td(""), num(units(e.total.gross)), num(units(e.total.fee)), num(`<b>${units(e.total.net)}</b>`), num(esc(e.total.claims))], "total")]), "sessions")}
  <h2>Per day (UTC)</h2>
  ${table(["Date", "#Claims", "#Paid", "#Fee", "#Net"], e.days.map((d) => row([td(esc(d.date)), num(esc(d.claims)), num(units(d.gross)), num(units(d.fee)), num(`<b>${units(d.net)}</b>`)])), "days")}`;
}

async function proposals() {
  const me = localStorage.getItem("plexus.voter") || "";
  const body = await api("/chain/v1/proposals?limit=20");
  const details = await Promise.all(body.proposals.map((p) => api(`/chain/v1/proposals/${p.id}`).catch(() => null)));
  const rows = body.proposals.map((p, i) => {
    const d = details[i];
    const total = big(p.yes) + big(p.no) + big(p.abstain) + big(p.veto);
    const share = (x) => (total === 0n ? "0%" : `${(Number((big(x) * 10000n) / total) / 100).toFixed(1)}%`);
    const mine = me && d ? (d.votes.find((v) => v.voter === me)?.option ?? "not voted") : "";
    return row([num(esc(p.id)), td(kindOf(p.kind)), td(pill(p.status)), td(addr(p.proposer)),
      num(`${amount(p.yes)} <span class="muted">${share(p.yes)}</span>`), num(`${amount(p.no)} <span class="muted">${share(p.no)}</span>`),
      num(amount(p.abstain)), num(amount(p.veto)), num(d && d.voting_blocks_left ? `${esc(d.voting_blocks_left)} blocks left` : `ends ${esc(p.voting_end)}`),
      td(me ? `<span class="my-vote">${esc(mine)}</span>` : '<span class="muted">—</span>'), td(esc(p.outcome))]);
  });
  return `<h1>Governance</h1>
  <form class="inline" id="voter"><label for="me">Your address</label><input id="me" value="${esc(me)}" placeholder="to see your own votes"><button>Show my votes</button></form>
  ${table(["#Id", "Proposal", "Status", "Proposer", "#Yes", "#No", "#Abstain", "#Veto", "#Voting", "Your vote", "Outcome"], rows, "proposals")}`;
}

// ---- routing ----

const routes = [
  [/^$/, overview, "overview"],
  [/^blocks$/, blocks, "blocks"],
  [/^block\/(.+)$/, block, "blocks"],
  [/^tx\/(.+)$/, tx, "blocks"],
  [/^account\/(.+)$/, account, "blocks"],
  [/^providers$/, providers, "providers"],
  [/^provider\/(.+)$/, provider, "providers"],
  [/^sessions$/, () => sessions(), "sessions"],
  [/^sessions\/(client|provider)\/(.+)$/, sessions, "sessions"],
  [/^earnings\/(.+)$/, earnings, "providers"],
  [/^proposals$/, proposals, "proposals"],
];

async function render() {
  const path = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  const found = routes.find(([re]) => re.test(path));
  view.removeAttribute("data-ready");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", found && a.dataset.nav === found[2]));
  try {
    if (!found) throw new Error(`No page ${path}`);
    const [re, page] = found;
    view.innerHTML = await page(...path.match(re).slice(1));
  } catch (e) {
    view.innerHTML = `<div class="error" id="error">${esc(e.message)}</div>`;
  }
  view.setAttribute("data-ready", path || "overview");
  const voter = document.getElementById("voter");
  if (voter) voter.addEventListener("submit", (ev) => {
    ev.preventDefault();
    localStorage.setItem("plexus.voter", document.getElementById("me").value.trim());
    render();
  });
}

// A search goes to what the text names: a height, a transaction, a block, or an account.
async function search(q) {
  q = q.trim().replace(/^0x/, "");
  if (/^\d+$/.test(q)) return `#/block/${q}`;
  if (/^[0-9a-fA-F]{64}$/.test(q)) {
    for (const [path, to] of [[`/chain/v1/txs/${q}`, `#/tx/${q}`], [`/chain/v1/blocks/${q}`, `#/block/${q}`]]) {
      try { await api(path); return to; } catch (_) { /* not this */ }
    }
    return `#/account/${q}`;
  }
  return `#/account/${encodeURIComponent(q)}`;
}

document.getElementById("search").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  location.hash = await search(document.getElementById("q").value);
});
window.addEventListener("hashchange", render);
api("/chain/v1/status").then((s) => {
  document.getElementById("footer").textContent = `Plexus node ${s.node.version} · chain ${s.chain_id}`;
}).catch(() => {});
render();

// egress-milter review desk. Everything shown comes from the daemon's JSON
// API and is set with textContent only: identities and reasons are chosen
// by senders, and none of it is ever parsed as HTML.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let csrf = null;
  let offset = 0;
  const limit = 50;
  let selected = null;

  function status(msg, error) {
    const s = $("status");
    s.textContent = msg;
    s.className = error ? "error" : "";
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  // Identities are chosen by senders, up to 254 characters without a
  // space: lines may break after an "@" or a "." (text nodes and <wbr>,
  // never HTML), the stylesheet shows at most three lines and cuts the
  // rest with an ellipsis, and the tooltip has the identity in full.
  function identityCell(tr, identity) {
    const td = document.createElement("td");
    td.className = "identity";
    td.title = identity;
    const span = document.createElement("span");
    for (const part of identity.split(/(?<=[@.])/)) {
      if (span.childNodes.length) span.appendChild(document.createElement("wbr"));
      span.appendChild(document.createTextNode(part));
    }
    td.appendChild(span);
    tr.appendChild(td);
    return td;
  }

  // A time as "2026-12-08 01:10:50Z", which wraps between date and time.
  function when(t) {
    return t ? String(t).replace("T", " ") : t;
  }

  async function get(path) {
    const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (r.status === 401) { location.reload(); throw new Error("logged out"); }
    if (!r.ok) throw new Error((await r.text()).trim());
    return r.json();
  }

  async function act(name, body) {
    const r = await fetch("/api/actions/" + name, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf || "" },
      body: JSON.stringify(body),
    });
    const t = await r.text();
    if (!r.ok) throw new Error(t.trim());
    return JSON.parse(t);
  }

  function filterParams() {
    const p = new URLSearchParams();
    for (const k of ["q", "state", "source", "rule", "since", "sort"]) {
      const v = $(k).value.trim();
      if (v) p.set(k, v);
    }
    return p;
  }

  async function loadLocks() {
    const p = filterParams();
    p.set("offset", offset);
    p.set("limit", limit);
    const a = await get("/api/locks?" + p.toString());
    const body = $("locks").tBodies[0];
    body.replaceChildren();
    for (const l of a.locks) {
      const tr = document.createElement("tr");
      tr.dataset.identity = l.identity;
      if (l.identity === selected) tr.className = "selected";
      identityCell(tr, l.identity);
      cell(tr, l.source);
      cell(tr, l.reason, "reason");
      cell(tr, l.rule || "");
      cell(tr, when(l.locked_at));
      cell(tr, l.state === "locked" ? (when(l.expires_at) || "never") : "lapsed " + (when(l.expires_at) || ""));
      cell(tr, l.previous_locks);
      const td = cell(tr, "");
      if (l.state === "locked") {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = "Unlock";
        b.className = "danger unlock-row";
        b.addEventListener("click", (ev) => { ev.stopPropagation(); quickUnlock(l.identity); });
        td.appendChild(b);
      }
      tr.addEventListener("click", () => select(l.identity));
      body.appendChild(tr);
    }
    $("count").textContent = "(" + a.matched + " matched of " + a.total + ")";
    const last = Math.min(a.offset + a.locks.length, a.matched);
    $("pageinfo").textContent = a.matched ? (a.offset + 1) + "–" + last : "none";
    $("prev").disabled = a.offset === 0;
    $("next").disabled = last >= a.matched;
  }

  async function quickUnlock(identity) {
    const reason = prompt("Why unlock " + identity + "? (kept in the lock's history)");
    if (!reason) return;
    await run(() => act("unlock", { identity, reason }));
  }

  async function run(f) {
    try {
      const a = await f();
      status(a.message);
      await loadLocks();
      if (selected) await select(selected);
      return a;
    } catch (e) {
      status(e.message, true);
    }
  }

  async function select(identity) {
    selected = identity;
    for (const tr of $("locks").tBodies[0].rows) tr.className = tr.dataset.identity === identity ? "selected" : "";
    const enc = encodeURIComponent(identity);
    const [lock, explain] = await Promise.all([
      get("/api/locks/" + enc).catch(() => null),
      identity.startsWith("@") || identity.includes("/") ? Promise.resolve(null) : get("/api/identities/" + enc).catch(() => null),
    ]);
    $("detail").hidden = false;
    $("detail-title").textContent = identity;
    const dl = $("detail-fields");
    dl.replaceChildren();
    const field = (k, v) => {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v == null ? "" : String(v);
      dl.append(dt, dd);
    };
    if (lock) {
      field("state", lock.state);
      field("source", lock.source);
      field("reason", lock.reason);
      field("rule", lock.rule || "");
      field("locked since", lock.locked_at);
      field("expires", lock.expires_at || "never");
      field("earlier locks", lock.previous_locks);
      if (lock.note) field("note", lock.note);
    } else {
      field("state", "not in the lock list");
    }
    const rules = $("rules").tBodies[0];
    rules.replaceChildren();
    for (const r of (explain && explain.rules) || []) {
      const tr = document.createElement("tr");
      cell(tr, r.rule);
      cell(tr, r.applies ? r.count : "n/a");
      cell(tr, r.limit == null ? "" : r.limit);
      cell(tr, r.rate + " " + r.counted + " per " + r.per);
      cell(tr, r.reset_in || "");
      cell(tr, r.action);
      rules.appendChild(tr);
    }
    const act = explain && explain.activity;
    $("queue-ids").textContent = act && act.queue_ids.length ? act.queue_ids.join(", ") : "none recorded";
    const h = $("history");
    h.replaceChildren();
    for (const e of (lock && lock.history) || []) {
      const li = document.createElement("li");
      li.textContent = e.at + " " + e.action + " by " + e.by + ": " + e.reason + (e.detail ? " (" + e.detail + ")" : "");
      h.appendChild(li);
    }
    $("unlock").disabled = !lock || lock.state !== "locked";
    $("extend").disabled = !lock || lock.state !== "locked";
    $("relock").disabled = !!lock && lock.state === "locked";
  }

  function reasonOf(id) {
    const r = $(id).value.trim();
    if (!r) { status("Give a reason: it is kept in the lock's history.", true); return null; }
    return r;
  }

  async function loadTop() {
    try {
      const a = await get("/api/identities?top=15");
      const body = $("top").tBodies[0];
      body.replaceChildren();
      for (const t of a.identities) {
        const tr = document.createElement("tr");
        identityCell(tr, t.identity);
        cell(tr, t.last_minute.messages);
        cell(tr, t.last_hour.messages);
        cell(tr, t.last_hour.recipients);
        cell(tr, t.locked ? "locked" : "");
        tr.addEventListener("click", () => select(t.identity));
        body.appendChild(tr);
      }
    } catch (e) { /* shown by the next action */ }
  }

  async function bulk(dry) {
    const reason = reasonOf("bulk-reason");
    if (!reason) return;
    const p = filterParams();
    const filter = { source: p.get("source"), rule: p.get("rule"), since: p.get("since"), identity: p.get("q") };
    if (!dry && !confirm("Unlock every lock the filter matches?")) return;
    const a = await run(() => act("bulk-unlock", { reason, filter, dry_run: dry }));
    if (a) $("bulk-out").textContent = a.message + "\n" + a.locks.map((l) => l.identity).join("\n");
  }

  document.addEventListener("DOMContentLoaded", async () => {
    try {
      const s = await get("/api/session");
      csrf = s.csrf;
      $("who").textContent = "logged in as " + s.user;
    } catch (e) { status(e.message, true); }
    $("filter").addEventListener("submit", (ev) => { ev.preventDefault(); offset = 0; loadLocks().catch((e) => status(e.message, true)); });
    $("prev").addEventListener("click", () => { offset = Math.max(0, offset - limit); loadLocks(); });
    $("next").addEventListener("click", () => { offset += limit; loadLocks(); });
    $("unlock").addEventListener("click", () => { const reason = reasonOf("act-reason"); if (reason) run(() => act("unlock", { identity: selected, reason })); });
    $("extend").addEventListener("click", () => { const reason = reasonOf("act-reason"); if (reason) run(() => act("extend", { identity: selected, reason, expires: $("act-expires").value.trim() || "never" })); });
    $("reset").addEventListener("click", () => { const reason = reasonOf("act-reason"); if (reason) run(() => act("reset", { identity: selected, reason })); });
    $("relock").addEventListener("click", () => { const reason = reasonOf("act-reason"); if (reason) run(() => act("lock", { identity: selected, reason, expires: $("act-expires").value.trim() || "never" })); });
    $("lock-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const reason = reasonOf("lock-reason");
      const identity = $("lock-identity").value.trim();
      if (reason && identity) run(() => act("lock", { identity, reason, expires: $("lock-expires").value.trim() || "never" }));
    });
    $("bulk-dry").addEventListener("click", () => bulk(true));
    $("bulk-go").addEventListener("click", () => bulk(false));
    await loadLocks().catch((e) => status(e.message, true));
    await loadTop();
    setInterval(loadTop, 5000);
  });
})();

// factory review: the funnel, documents beside their seeds, labels by keyboard.
// Served by `factory review FOLDER` (JSON endpoints under /api/) or embedded whole by `--html OUT`
// (window.REVIEW_STATIC holds the summary and the first documents; labeling is off there).
"use strict";
(function () {
  const STATIC = window.REVIEW_STATIC || null;
  const TOKEN = new URLSearchParams(location.search).get("token") || "";
  const KEYS = { c: "clean", "1": "clean", u: "unfaithful", "2": "unfaithful", m: "meta", "3": "meta",
    t: "truncated", "4": "truncated", r: "repetitive", "5": "repetitive", o: "other", "6": "other" };
  const state = { filters: { recipe: "", teacher: "", status: "", reason: "", label: "" }, page: 0, size: 50,
    pages: 1, rows: [], sel: -1, open: null, summary: null };
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of kids) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    return e;
  };

  // -- data: the server's JSON endpoints, or the embedded copy ---------------------------------
  async function api(path, params, body) {
    if (STATIC) return staticApi(path, params);
    const q = new URLSearchParams(params || {});
    if (TOKEN) q.set("token", TOKEN);
    const opts = body ? { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) } : {};
    const r = await fetch(path + "?" + q.toString(), opts);
    const data = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  }
  function staticApi(path, params) {
    if (path === "api/summary") return STATIC.summary;
    if (path === "api/doc") return STATIC.docs.find((d) => d.id === params.id) || null;
    const f = params;
    let docs = STATIC.docs.filter((d) => ["recipe", "teacher", "status", "reason"].every((k) => !f[k] || d[k] === f[k]));
    const size = +f.size, page = +f.page;
    const rows = docs.slice(page * size, page * size + size).map((d) => ({ ...d, text: d.text.slice(0, 240) }));
    return { total: docs.length, page, size, rows };
  }

  // -- the funnel ------------------------------------------------------------------------------
  function funnelTable(title, key, groups) {
    const t = el("table", {}, el("thead", {}, el("tr", {}, ...[title, "seeds", "requests", "documents", "kept", "rejected", "failed"].map((h) => el("th", {}, h)))));
    const tb = el("tbody");
    for (const g of groups) {
      const name = el("a", { onclick: () => setFilter(key, g[key]) }, g[key]);
      tb.append(el("tr", {}, el("td", {}, name), ...["seeds", "requests", "documents", "kept", "rejected", "failed"].map((k) => el("td", { class: "n" }, g[k] ?? "–"))));
    }
    t.append(tb);
    return el("div", {}, el("h3", {}, "per " + key), t);
  }
  function renderSummary(s) {
    state.summary = s;
    $("folder").textContent = s.folder + " (" + s.kind + ")";
    $("who").textContent = s.static ? "static copy (" + s.embedded + " of " + s.funnel.total.requests +
      " entries embedded; run `factory review` on the folder to label)" :
      "reviewer: " + s.reviewer + " · labels: " + (s.labels.path || "read-only") + " · " + s.labels.mine + " labeled by you";
    const bad = s.labels.bad_lines || [];
    $("warn").hidden = !bad.length;
    $("warn").textContent = bad.length ? bad.length + " corrupt line(s) in labels.jsonl skipped: line " + bad.slice(0, 20).join(", ") + (bad.length > 20 ? ", …" : "") : "";
    $("agree").textContent = (s.labels.agreement || []).map((a) => "agreement " + a.reviewers.join(" / ") + ": " + a.both +
      " docs both labeled" + (a.both ? ", same label " + (100 * a.agree).toFixed(1) + "%, Cohen's kappa " + (a.kappa === null ? "n/a" : a.kappa.toFixed(3)) : "")).join(" · ");
    const T = s.funnel.total, body = $("funnel-body");
    body.replaceChildren();
    const tot = el("table", {}, el("tbody", {},
      ...[["seeds", T.seeds], ["requests", T.requests], ["documents", T.documents], ["kept", T.kept ?? "(no curate stage)"],
        ["rejected by curate", T.rejected], ["generation failures", T.failed], ["not curated", T.uncurated]]
        .map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "n", "data-funnel": k }, v)))));
    body.append(el("div", {}, el("h3", {}, "total"), tot));
    body.append(funnelTable("recipe", "recipe", s.funnel.recipes));
    body.append(funnelTable("teacher", "teacher", s.funnel.teachers));
    const rt = el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "stage"), el("th", {}, "reason"), el("th", {}, "count"))));
    const rb = el("tbody");
    for (const r of s.funnel.reasons) rb.append(el("tr", {}, el("td", {}, r.stage), el("td", {}, el("a", { onclick: () => setFilter("reason", r.reason) }, r.reason)), el("td", { class: "n" }, r.count)));
    rt.append(rb);
    body.append(el("div", {}, el("h3", {}, "reasons"), rt));
    for (const sel of document.querySelectorAll("#filters select")) {
      const key = sel.dataset.key, cur = state.filters[key];
      sel.replaceChildren(el("option", { value: "" }, "any"), ...(s.options[key] || []).map((v) => el("option", { value: v }, v)));
      sel.value = cur;
    }
  }
  function setFilter(key, value) {
    state.filters[key] = value;
    $("f-" + key).value = value;
    state.page = 0;
    loadPage();
  }

  // -- the list --------------------------------------------------------------------------------
  async function loadPage(selectFirst) {
    const d = await api("api/docs", { ...state.filters, page: state.page, size: state.size });
    state.rows = d.rows;
    state.pages = Math.max(1, Math.ceil(d.total / d.size));
    $("pageinfo").textContent = "page " + (d.page + 1) + " / " + state.pages + " (" + d.total + " entries)";
    const tb = document.querySelector("#list tbody");
    tb.replaceChildren(...d.rows.map((r, i) => el("tr", { "data-id": r.id, onclick: () => { select(i); openDoc(r.id); } },
      el("td", {}, r.id.slice(0, 12)), el("td", {}, r.recipe), el("td", { class: "st-" + r.status }, r.status),
      el("td", {}, r.reason), el("td", { class: "mylabel" }, r.label || ""), el("td", { class: "snip" }, r.text))));
    select(selectFirst === false ? -1 : Math.min(Math.max(state.sel, 0), d.rows.length - 1));
    markOpen();
  }
  function select(i) {
    state.sel = i;
    document.querySelectorAll("#list tbody tr").forEach((tr, j) => tr.classList.toggle("sel", j === i));
    const tr = document.querySelectorAll("#list tbody tr")[i];
    if (tr) tr.scrollIntoView({ block: "nearest" });
  }
  function markOpen() {
    document.querySelectorAll("#list tbody tr").forEach((tr) => tr.classList.toggle("open", state.open && tr.dataset.id === state.open.id));
  }

  // -- one document beside its seed ------------------------------------------------------------
  function marked(text, marks, notes) {
    const box = el("div", { class: "text" });
    const cut = (where) => (notes || []).filter((n) => n.kind === "stripped" && (n.where || "start") === where)
      .map((n) => el("del", { title: "stripped by " + (n.step || "curate") }, n.text + "\n"));
    box.append(...cut("start"));
    let at = 0;
    for (const m of marks || []) {
      if (m.start < at) continue;
      box.append(text.slice(at, m.start));
      box.append(el("mark", { class: "k-" + m.kind, title: m.kind + ": " + m.why }, text.slice(m.start, m.end)));
      at = m.end;
    }
    box.append(text.slice(at));
    const tail = cut("end");
    if (tail.length) box.append("\n", ...tail);
    return box;
  }
  async function openDoc(id) {
    const d = await api("api/doc", { id });
    if (!d) return;
    state.open = d;
    markOpen();
    const mine = d.labels && d.labels[state.summary.reviewer];
    const notes = el("ul", { class: "notes" }, ...(d.notes || []).map((n) => el("li", {}, el("b", {}, n.kind + ": "), n.text,
      n.doc ? el("a", { href: "#", onclick: (e) => { e.preventDefault(); openDoc(n.doc); } }, " (open it)") : null)));
    const others = Object.entries(d.labels || {}).filter(([who]) => who !== state.summary.reviewer)
      .map(([who, l]) => who + ": " + l.label + (l.note ? " (" + l.note + ")" : "")).join("; ");
    const bar = el("div", { class: "labelbar" }, "label:",
      ...["clean", "unfaithful", "meta", "truncated", "repetitive", "other"].map((l) =>
        el("button", { class: mine && mine.label === l ? "on" : "", "data-label": l, onclick: () => label(l) }, l)),
      el("input", { id: "note", placeholder: "note (n)", value: mine ? mine.note || "" : "" }),
      el("span", { id: "saved", class: "saved" }, mine ? "saved: " + mine.label : ""));
    if (STATIC) bar.querySelectorAll("button,input").forEach((b) => (b.disabled = true));
    $("detail").replaceChildren(...[
      el("div", {}, el("b", {}, d.id), " · " + d.recipe + " · " + d.teacher + " · ", el("span", { class: "st-" + d.status }, d.status),
        d.reason ? " · " + d.reason : "", " · seed ", el("code", {}, d.seed_id || "–")),
      bar, others ? el("div", { class: "muted" }, "other reviewers: " + others) : null, notes,
      el("div", { class: "pair" },
        el("div", {}, el("h3", {}, "document"), marked(d.text, d.marks, d.notes)),
        el("div", {}, el("h3", {}, "seed passage"), d.seed ? el("div", { class: "text seed" }, d.seed.text) : el("p", { class: "muted" }, "seed not found in this run")))].filter(Boolean));
  }

  // -- labels ----------------------------------------------------------------------------------
  async function label(name) {
    const d = state.open;
    if (!d || STATIC) return;
    const note = $("note") ? $("note").value : "";
    try {
      await api("api/label", {}, { id: d.id, label: name, note });
    } catch (e) {
      $("saved").className = "err";
      $("saved").textContent = "not saved: " + e.message;
      return;
    }
    const i = state.rows.findIndex((r) => r.id === d.id);
    if (i >= 0) document.querySelectorAll("#list tbody tr td.mylabel")[i].textContent = name;
    state.summary.labels.mine += mine(d) ? 0 : 1;
    d.labels = d.labels || {};
    d.labels[state.summary.reviewer] = { label: name, note };
    // move on to the next document of the page
    if (i >= 0 && i + 1 < state.rows.length) { select(i + 1); await openDoc(state.rows[i + 1].id); }
    else { await openDoc(d.id); }
    $("saved").textContent = "saved " + name + " for " + d.id.slice(0, 12);
  }
  function mine(d) { return d.labels && d.labels[state.summary.reviewer]; }

  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) {
      if (e.key === "Escape" || (e.key === "Enter" && t.tagName === "INPUT")) t.blur();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    if (k === "j" || k === "ArrowDown") { select(Math.min(state.sel + 1, state.rows.length - 1)); e.preventDefault(); }
    else if (k === "k" || k === "ArrowUp") { select(Math.max(state.sel - 1, 0)); e.preventDefault(); }
    else if (k === "Enter") { const r = state.rows[state.sel]; if (r) openDoc(r.id); }
    else if (k === "n") { const n = $("note"); if (n) { n.focus(); e.preventDefault(); } }
    else if (k === "]") { if (state.page + 1 < state.pages) { state.page++; state.sel = 0; loadPage(); } }
    else if (k === "[") { if (state.page > 0) { state.page--; state.sel = 0; loadPage(); } }
    else if (KEYS[k]) { if (!state.open && state.rows[state.sel]) openDoc(state.rows[state.sel].id).then(() => label(KEYS[k])); else label(KEYS[k]); }
  });
  for (const sel of document.querySelectorAll("#filters select")) sel.addEventListener("change", () => setFilter(sel.dataset.key, sel.value));
  $("prev").addEventListener("click", () => { if (state.page > 0) { state.page--; loadPage(); } });
  $("next").addEventListener("click", () => { if (state.page + 1 < state.pages) { state.page++; loadPage(); } });

  (async function start() {
    try {
      renderSummary(await api("api/summary", {}));
      await loadPage();
      document.body.dataset.ready = "1";
    } catch (e) {
      $("funnel-body").textContent = "could not load: " + e.message;
    }
  })();
})();

// Backstop dashboard: polls /v1/backstop/status and draws it. Every value
// from the document is written with textContent, never as HTML.
"use strict";

(() => {
  const POLL_MS = 1000;
  const KEY_ITEM = "backstop.dashboard.key";
  const SVG = "http://www.w3.org/2000/svg";

  // What each circuit state is called, its symbol (from blocks every
  // common font has: no emoji font needed), and whether the model takes
  // calls in it.
  const STATES = {
    closed: { label: "closed", symbol: "\u25CF", takes: "takes calls" },
    half_open: { label: "half-open", symbol: "\u25D0", takes: "trial calls only" },
    cooling_down: { label: "cooling down", symbol: "\u25D4", takes: "no calls until its cooldown ends" },
    open: { label: "open", symbol: "\u2715", takes: "no calls: circuit open" },
    disabled: { label: "disabled", symbol: "\u2298", takes: "no calls until a probe succeeds" },
  };

  // Why a primary did not answer, in words.
  const REASONS = {
    connect: "connection failed",
    timeout: "timed out",
    rate_limited: "rate limited (429)",
    quota_exhausted: "quota exhausted",
    overloaded: "overloaded",
    server: "server error (5xx)",
    auth: "authentication refused",
    context_length: "context too long",
    content_policy: "content policy",
    bad_request: "bad request",
    invalid_response: "invalid response",
    stream_interrupted: "stream interrupted",
    model_not_found: "model not found",
    unsupported: "unsupported request",
    circuit_open: "skipped: circuit open",
    over_budget: "skipped: over budget",
    over_rate_limit: "skipped: over rate limit",
    context_window: "skipped: context window too small",
    no_streaming: "skipped: no streaming",
    no_tools: "skipped: no tool support",
    deadline: "skipped: deadline",
  };

  const $ = (id) => document.getElementById(id);

  let key = sessionStorage.getItem(KEY_ITEM) || "";
  let keyRefused = false;
  let lastOk = 0;
  let timer = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }

  function span(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s % 60) + " s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + " h " + (m % 60) + " min";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }

  function millis(v) {
    if (v === null || v === undefined) return "\u2013";
    return v < 10 ? v.toFixed(1) + " ms" : Math.round(v) + " ms";
  }

  function percent(part, whole) {
    if (!whole) return "\u2013";
    return (100 * part / whole).toFixed(part === whole || part === 0 ? 0 : 1) + "%";
  }

  function counted(n, noun) {
    return n + " " + noun + (n === 1 ? "" : "s");
  }

  function usd(v) {
    return "$" + (v < 1 ? v.toFixed(4) : v.toFixed(2));
  }

  function stateBadge(state) {
    const s = STATES[state] || { label: state, symbol: "?" };
    return el("span", { class: "state state-" + state, "data-state": state },
      el("span", { "aria-hidden": "true" }, s.symbol + " "), s.label);
  }

  // The circuit of `model` under the health policy of `scenario`.
  function circuitOf(model, scenario) {
    const health = model.health || {};
    if (health[scenario.health]) return health[scenario.health];
    const names = Object.keys(health).filter((n) => n.split("#")[0] === scenario.health);
    return names.length ? health[names[0]] : null;
  }

  function takesCalls(state) {
    return state === "closed" || state === "half_open";
  }

  // ------------------------------------------------------------ sections

  // Sets a node's text only when it changes (live regions announce every
  // change).
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function drawGlance(doc) {
    const summary = $("glance-summary");
    const list = $("glance-list");
    list.replaceChildren();
    const down = [];
    for (const model of doc.models) {
      for (const [policy, circuit] of Object.entries(model.health || {})) {
        if (circuit.state !== "closed") down.push({ model, policy, circuit });
      }
    }
    const stopped = down.filter((d) => !takesCalls(d.circuit.state)).length;
    summary.className = down.length ? "down-title" : "all-ok";
    if (!down.length) {
      setText(summary, "\u2714 Every model takes calls (" + counted(doc.models.length, "model") + ", " + counted(doc.scenarios.length, "scenario") + ").");
      document.title = "Backstop dashboard";
      return;
    }
    const names = down.map((d) => d.model.id + " (" + (STATES[d.circuit.state] || { label: d.circuit.state }).label + ")").join(", ");
    setText(summary, "\u26A0 " + (stopped
      ? stopped + (stopped === 1 ? " model takes no calls: " : " models take no calls: ")
      : "on trial: ") + names + ".");
    document.title = "\u26A0 " + (stopped || down.length) + " down \u2014 Backstop dashboard";
    for (const { model, policy, circuit } of down) {
      const s = STATES[circuit.state] || { label: circuit.state, takes: "" };
      let words = model.id + " is " + s.label;
      if (circuit.since_unix_ms) words += " since " + clock(circuit.since_unix_ms) + " (for " + span(doc.generated_unix_ms - circuit.since_unix_ms) + ")";
      if (circuit.retry_after_ms) words += ", next try in " + span(circuit.retry_after_ms);
      const item = el("li", { "data-model": model.id, "data-state": circuit.state }, stateBadge(circuit.state), " " + words + " \u2014 " + s.takes);
      if (Object.keys(model.health).length > 1) item.append(" (" + policy + ")");
      list.append(item);
    }
  }

  function drawScenarios(doc) {
    const box = $("scenarios");
    const byId = new Map(doc.models.map((m) => [m.id, m]));
    box.replaceChildren();
    for (const scenario of doc.scenarios) {
      const article = el("article", { class: "scenario", "data-scenario": scenario.name });
      article.append(el("h3", {}, scenario.name));
      article.append(el("p", { class: "meta" },
        "selector " + scenario.selector + " \u00B7 health " + scenario.health + " \u00B7 budget " + scenario.budget +
        " \u00B7 mid-stream " + scenario.mid_stream + (scenario.hedge_after_ms ? " \u00B7 hedges after " + scenario.hedge_after_ms + " ms" : "")));
      const table = el("table");
      table.append(el("caption", { class: "visually-hidden" }, "Chain of " + scenario.name + ", primary first"));
      table.append(el("thead", {}, el("tr", {},
        el("th", { scope: "col" }, "#"),
        el("th", { scope: "col" }, "Model"),
        el("th", { scope: "col" }, "Circuit"),
        el("th", { scope: "col" }, "Since"),
        el("th", { scope: "col" }, "Next try"),
        el("th", { scope: "col" }, "Window"),
        el("th", { scope: "col" }, "Latency (total)"),
        el("th", { scope: "col" }, "First token"),
        el("th", { scope: "col" }, "Probe"),
        el("th", { scope: "col" }, "Last failures"))));
      const body = el("tbody");
      scenario.chain.forEach((id, level) => {
        const model = byId.get(id);
        if (!model) return;
        const circuit = circuitOf(model, scenario);
        const state = circuit ? circuit.state : "closed";
        const since = circuit && circuit.since_unix_ms
          ? el("span", { class: "since" }, clock(circuit.since_unix_ms), el("small", {}, "for " + span(doc.generated_unix_ms - circuit.since_unix_ms)))
          : "\u2013";
        const failures = (model.recent_failures || []).slice(0, 3)
          .map((f) => (REASONS[f.kind] || f.kind) + " at " + clock(f.unix_ms)).join("; ");
        body.append(el("tr", { "data-model": id, "data-state": state, class: takesCalls(state) ? null : "down" },
          el("td", { class: "num" }, String(level)),
          el("th", { scope: "row" }, el("span", { class: "mono" }, id), el("small", { class: "meta block" }, model.provider + " / " + model.upstream)),
          el("td", {}, stateBadge(state)),
          el("td", {}, since),
          el("td", { class: "num" }, circuit && circuit.retry_after_ms !== null && circuit.retry_after_ms !== undefined ? span(circuit.retry_after_ms) : "\u2013"),
          el("td", { class: "num" }, circuit ? circuit.window_calls + " calls, " + (100 * circuit.failure_ratio).toFixed(0) + "% failed" : "\u2013"),
          el("td", { class: "num" }, millis(model.latency_ms.total)),
          el("td", { class: "num" }, millis(model.latency_ms.first_token)),
          el("td", { class: "num" }, millis(model.latency_ms.probe)),
          el("td", {}, failures || "\u2013")));
      });
      table.append(body);
      article.append(el("div", { class: "table-wrap" }, table));
      box.append(article);
    }
  }

  function drawRate(doc) {
    const summary = $("rate-summary");
    const chart = $("rate-chart");
    const history = doc.fallback_history;
    const alerts = doc.alerts;
    const words = [];
    if (history) {
      const requests = history.steps.reduce((a, s) => a + s.requests, 0);
      const fallbacks = history.steps.reduce((a, s) => a + s.fallbacks, 0);
      const errors = history.steps.reduce((a, s) => a + s.errors, 0);
      words.push("Last " + span(Math.min(history.span_ms, history.steps.length * history.step_ms)) + ": " +
        counted(fallbacks, "fallback") + " in " + counted(requests, "request") + " (" + percent(fallbacks, requests) + "), " + counted(errors, "error") + ".");
    }
    if (alerts) {
      words.push("Alert window (" + span(alerts.window_ms) + "): " + alerts.fallbacks + " of " + alerts.requests +
        " (" + percent(alerts.fallbacks, alerts.requests) + "), alert at " + counted(alerts.max_fallbacks, "fallback") + "; " +
        counted(alerts.alerts_fired, "alert") + " fired" + (alerts.last_alert_unix_ms ? ", last at " + clock(alerts.last_alert_unix_ms) : "") + ".");
    }
    summary.textContent = words.join(" ");
    chart.replaceChildren();
    if (!history) return;

    const W = 720, H = 180, left = 40, right = 8, top = 8, bottom = 22;
    const plotW = W - left - right, plotH = H - top - bottom;
    // A fresh gateway shows five minutes; the axis grows to the full span.
    const shown = Math.min(history.span_ms, Math.max(5 * 60 * 1000, history.steps.length * history.step_ms));
    const end = doc.generated_unix_ms, start = end - shown;
    const x = (t) => left + plotW * Math.max(0, (t - start)) / shown;
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "Fallback rate per " + span(history.step_ms) + ", last " + span(shown) + ". " + summary.textContent });
    for (const frac of [0, 0.5, 1]) {
      const y = top + plotH * (1 - frac);
      root.append(svg("line", { class: "axis", x1: left, x2: W - right, y1: y, y2: y }));
      root.append(svg("text", { class: "label", x: left - 4, y: y + 4, "text-anchor": "end" }, (frac * 100) + "%"));
    }
    root.append(svg("text", { class: "label", x: left, y: H - 6 }, clock(start)));
    root.append(svg("text", { class: "label", x: W - right, y: H - 6, "text-anchor": "end" }, clock(end) + " (now)"));
    let previousEnd = history.steps.length ? history.steps[0].end_unix_ms - history.step_ms : start;
    for (const step of history.steps) {
      const from = Math.max(previousEnd, start);
      previousEnd = step.end_unix_ms;
      if (step.end_unix_ms <= start) continue;
      const x0 = x(from), x1 = Math.max(x(step.end_unix_ms) - 1, x0 + 1);
      const tip = clock(from) + "\u2013" + clock(step.end_unix_ms) + ": ";
      if (!step.requests) {
        const idle = svg("rect", { class: "idle", x: x0, y: top + plotH - 1, width: x1 - x0, height: 1 });
        idle.append(svg("title", {}, tip + "no requests"));
        root.append(idle);
        continue;
      }
      const rate = step.fallbacks / step.requests;
      const h = Math.max(rate * plotH, rate > 0 ? 2 : 1);
      const bar = svg("rect", { class: rate > 0 ? "bar" : "idle", x: x0, y: top + plotH - h, width: x1 - x0, height: h });
      bar.append(svg("title", {}, tip + step.fallbacks + " of " + step.requests + " requests fell back (" + percent(step.fallbacks, step.requests) + "), " + step.errors + " errors"));
      root.append(bar);
    }
    chart.append(root);
  }

  function drawEvents(doc) {
    const events = (doc.recent_fallbacks || []).slice().reverse();
    $("events-empty").hidden = events.length > 0;
    $("events-empty").textContent = doc.recent_fallbacks ? "No fallback yet." : "The alert sink is off: no fallback events are kept.";
    $("events").hidden = events.length === 0;
    const body = $("events-body");
    body.replaceChildren();
    for (const e of events) {
      body.append(el("tr", { "data-reason": e.reason },
        el("td", { class: "mono" }, clock(e.timestamp_ms)),
        el("td", {}, e.scenario),
        el("td", { class: "mono" }, e.primary),
        el("td", { class: "mono" }, e.model_used),
        el("td", {}, el("span", { class: "reason" }, REASONS[e.reason] || e.reason), REASONS[e.reason] ? el("small", { class: "meta mono" }, " " + e.reason) : null),
        el("td", { class: "num" }, String(e.level)),
        el("td", { class: "num" }, millis(e.latency_ms))));
    }
  }

  function drawBudgets(doc) {
    const box = $("budgets");
    box.replaceChildren();
    if (!doc.budgets.length) {
      box.append(el("p", {}, "No budget policy."));
      return;
    }
    const table = el("table");
    table.append(el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, "Policy"), el("th", { scope: "col" }, "Spent"), el("th", { scope: "col" }, "Reserved"),
      el("th", { scope: "col" }, "Limit"), el("th", { scope: "col" }, "Use"))));
    const body = el("tbody");
    for (const b of doc.budgets) {
      const used = b.spent + b.reserved;
      const use = b.limit ? el("span", {},
        el("meter", { min: 0, max: b.limit, low: b.limit * 0.7, high: b.limit * 0.9, optimum: 0, value: Math.min(used, b.limit) }),
        " " + percent(used, b.limit)) : "no cap";
      body.append(el("tr", { "data-budget": b.policy },
        el("th", { scope: "row" }, b.policy), el("td", { class: "num" }, usd(b.spent)), el("td", { class: "num" }, usd(b.reserved)),
        el("td", { class: "num" }, b.limit === null || b.limit === undefined ? "\u2013" : usd(b.limit)), el("td", {}, use)));
    }
    table.append(body);
    box.append(el("div", { class: "table-wrap" }, table));
  }

  // A use against an optional cap: "12 / 60" with a meter, or "12 (no cap)".
  function useOf(used, cap) {
    if (cap === null || cap === undefined) return used + " (no cap)";
    return el("span", {},
      el("meter", { min: 0, max: cap, low: cap * 0.7, high: cap * 0.9, optimum: 0, value: Math.min(used, cap) }),
      " " + used + " / " + cap + " (" + percent(used, cap) + ")");
  }

  // Rate limits (`rate_limits`: the models' quotas, then each caller that
  // has called), when the document carries them.
  function drawLimits(doc) {
    const section = $("limits-section");
    const limits = Array.isArray(doc.rate_limits) ? doc.rate_limits : [];
    section.hidden = limits.length === 0;
    const box = $("limits");
    box.replaceChildren();
    if (!limits.length) return;
    const table = el("table");
    table.append(el("caption", { class: "visually-hidden" }, "Rate limits and their use in the last minute"));
    table.append(el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, "Whose"), el("th", { scope: "col" }, "Name"),
      el("th", { scope: "col" }, "Requests / min"), el("th", { scope: "col" }, "Tokens / min"),
      el("th", { scope: "col" }, "Refused"), el("th", { scope: "col" }, "Counted"))));
    const body = el("tbody");
    for (const l of limits) {
      body.append(el("tr", { "data-limit": l.scope + ":" + l.name },
        el("td", {}, l.scope === "model" ? "model quota" : l.scope === "caller" ? "caller" : String(l.scope)),
        el("th", { scope: "row", class: "mono" }, String(l.name)),
        el("td", {}, useOf(l.requests, l.rpm)),
        el("td", {}, useOf(l.tokens, l.tpm)),
        el("td", { class: "num" }, String(l.refused)),
        el("td", {}, l.shared ? "fleet-wide" : "this replica")));
    }
    table.append(body);
    box.append(el("div", { class: "table-wrap" }, table));
  }

  function drawStore(doc) {
    const section = $("store-section");
    const state = doc.state;
    section.hidden = !state || state.backend === "local";
    if (section.hidden) return;
    const p = $("store");
    p.replaceChildren(
      el("span", { class: "mono" }, state.backend), ": ",
      state.store_up
        ? el("span", { class: "store-up", "data-store": "up" }, "\u2714 up \u2014 circuits, budgets and leases are shared with the fleet")
        : el("span", { class: "store-down", "data-store": "down" }, "\u2715 DOWN \u2014 this replica runs on its own local state until the store answers"));
  }

  function draw(doc) {
    drawGlance(doc);
    drawScenarios(doc);
    drawRate(doc);
    drawEvents(doc);
    drawBudgets(doc);
    drawLimits(doc);
    drawStore(doc);
  }

  // ------------------------------------------------------------- polling

  function askForKey(refused) {
    $("board").hidden = true;
    $("key-form").hidden = false;
    const message = $("key-message");
    message.classList.toggle("refused", refused);
    if (refused) message.textContent = "The gateway refused that key. Enter one of its API keys.";
    setConnection("Waiting for an API key.", "", false);
    $("forget-key").hidden = true;
    $("key-input").focus();
  }

  // `state` is announced (it changes rarely); `detail` ticks silently.
  function setConnection(state, detail, stale) {
    setText($("connection"), state);
    $("updated").textContent = detail;
    $("connection-line").classList.toggle("stale", stale);
  }

  async function poll() {
    timer = null;
    if (document.hidden) {
      schedule();
      return;
    }
    const headers = { Accept: "application/json" };
    if (key) headers.Authorization = "Bearer " + key;
    try {
      const response = await fetch("/v1/backstop/status", { headers, cache: "no-store" });
      if (response.status === 401) {
        if (key) sessionStorage.removeItem(KEY_ITEM);
        keyRefused = Boolean(key);
        key = "";
        askForKey(keyRefused);
        return; // Wait for a key; the form starts polling again.
      }
      if (!response.ok) throw new Error("status " + response.status);
      const doc = await response.json();
      lastOk = Date.now();
      $("key-form").hidden = true;
      $("board").hidden = false;
      $("forget-key").hidden = !key;
      draw(doc);
      setConnection("Live", "\u2014 updated " + clock(doc.generated_unix_ms), false);
    } catch (error) {
      const age = lastOk ? " Last update " + span(Date.now() - lastOk) + " ago." : "";
      setConnection("Cannot reach the gateway; retrying.", "(" + error.message + ")" + age, true);
    }
    schedule();
  }

  function schedule() {
    if (timer === null) timer = setTimeout(poll, POLL_MS);
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("key-input").value.trim();
    if (!value) return;
    key = value;
    sessionStorage.setItem(KEY_ITEM, key);
    $("key-input").value = "";
    setConnection("Connecting\u2026", "", false);
    if (timer !== null) clearTimeout(timer);
    poll();
  });

  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    key = "";
    if (timer !== null) clearTimeout(timer);
    poll();
  });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer !== null) {
      clearTimeout(timer);
      poll();
    }
  });

  poll();
})();

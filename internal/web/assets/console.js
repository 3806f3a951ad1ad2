// Leasehold console: polls the node's JSON every sample interval and
// redraws the cluster table, the busiest keys and their charts. Plain
// JavaScript, no dependencies; the page works without it, only not live.
"use strict";
(function () {
  const body = document.body;
  const interval = Math.max(500, Number(body.dataset.interval) || 1000);
  const q = document.getElementById("q");
  let keysData = null;

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svgEl(tag, attrs) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  function rate(v) {
    if (!v) return "0";
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }

  // draw fills an SVG chart with admitted and denied per second and, if
  // given, the limit's rate as a dashed line. Unknown samples are gaps.
  function draw(svg, series, limitPerSecond) {
    const w = svg.viewBox.baseVal.width || 300, h = svg.viewBox.baseVal.height || 40;
    const a = series.admitted || [], d = series.denied || [];
    let top = limitPerSecond || 0;
    for (const v of a) if (v !== null && v > top) top = v;
    for (const v of d) if (v !== null && v > top) top = v;
    top = top > 0 ? top * 1.1 : 1;
    const n = Math.max(a.length, 2);
    const x = (i) => (i * w) / (n - 1), y = (v) => h - (v / top) * h;
    function line(vals, cls) {
      let pts = [], out = [];
      vals.forEach((v, i) => {
        if (v === null) { if (pts.length) out.push(pts); pts = []; return; }
        pts.push(x(i).toFixed(1) + "," + y(v).toFixed(1));
      });
      if (pts.length) out.push(pts);
      return out.map((p) => svgEl("polyline", { class: cls, points: p.join(" ") }));
    }
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (limitPerSecond) svg.appendChild(svgEl("line", { class: "limit", x1: 0, x2: w, y1: y(limitPerSecond), y2: y(limitPerSecond) }));
    for (const p of line(d, "denied")) svg.appendChild(p);
    for (const p of line(a, "admitted")) svg.appendChild(p);
    let last = null;
    for (let i = a.length - 1; i >= 0; i--) if (a[i] !== null) { last = a[i]; break; }
    svg.dataset.last = last === null ? "" : String(last);
    svg.dataset.samples = String(a.filter((v) => v !== null).length);
    const title = svgEl("title", {});
    title.textContent = "admitted/s (blue), denied/s (orange)" + (limitPerSecond ? ", limit " + rate(limitPerSecond) + "/s (dashed)" : "");
    svg.appendChild(title);
  }

  function renderCluster(c) {
    document.getElementById("leader").textContent = c.leader_id || "none known";
    document.getElementById("term").textContent = c.term;
    // Held out of this node's cap (--max-keys, --max-sessions), if it says.
    const ofCap = (n, cap) => cap ? n + "/" + cap : String(n);
    document.getElementById("counts").textContent = ofCap(c.keys, c.max_keys) + " keys, " + c.leases + " leases, " +
      ofCap(c.sessions, c.max_sessions) + " sessions";
    const tb = document.querySelector("#members tbody");
    tb.replaceChildren(...c.members.map((m) => {
      const tr = el("tr", { "data-id": m.id, class: m.ready ? "ready" : "notready" });
      const name = el("td");
      if (m.url) name.appendChild(el("a", { href: m.url }, m.id)); else name.textContent = m.id;
      if (m.self) name.appendChild(document.createTextNode(" (this node)"));
      if (!m.voter) name.appendChild(document.createTextNode(" (non-voter)"));
      const health = !m.reachable ? (m.error || "unknown") : m.ready ? "ready" : "not ready: " + (m.problems || []).join("; ");
      tr.append(name, el("td", {}, m.reachable ? m.state : "?"), el("td", {}, m.reachable ? m.term : ""),
        el("td", {}, m.reachable ? m.applied_index : ""), el("td", {}, m.reachable ? m.commit_index : ""),
        el("td", { class: "health" }, health), el("td", {}, m.raft_addr || ""));
      return tr;
    }));
  }

  function renderKeys(k) {
    keysData = k;
    document.getElementById("total-admitted").textContent = rate(k.admitted_per_s);
    document.getElementById("total-denied").textContent = rate(k.denied_per_s);
    draw(document.getElementById("total-chart"), k.total, 0);
    const tb = document.querySelector("#keys tbody");
    const rows = (k.keys || []).map((r) => {
      const tr = el("tr", { "data-key": r.key });
      const name = el("td", { class: "key" });
      const a = el("a", { href: "#", class: "pick", "data-key": r.key }, r.key);
      name.appendChild(a);
      const svg = svgEl("svg", { class: "chart", "data-key": r.key, viewBox: "0 0 300 40", preserveAspectRatio: "none" });
      const chart = el("td");
      chart.appendChild(svg);
      tr.append(name, el("td", { class: "num admitted" }, rate(r.admitted_per_s)), el("td", { class: "num denied" }, rate(r.denied_per_s)),
        el("td", { class: "limit" }, r.limit ? r.limit.text : "none"), el("td", { class: "num leases" }, r.leases),
        el("td", { class: "num lessees" }, r.lessees), chart);
      draw(svg, r.series || {}, r.limit ? r.limit.per_second : 0);
      return tr;
    });
    if (!rows.length) {
      const tr = el("tr", { class: "empty" });
      tr.appendChild(el("td", { colspan: 7 }, "no traffic seen yet" + (k.q ? " for “" + k.q + "”" : "")));
      rows.push(tr);
    }
    tb.replaceChildren(...rows);
    const mb = document.querySelector("#models tbody");
    const models = (k.models || []).map((m) => {
      const tr = el("tr", { "data-model": m.model });
      const td = el("td");
      td.appendChild(el("a", { href: "/?q=:" + encodeURIComponent(m.model), class: "model" }, m.model));
      tr.append(td, el("td", { class: "num" }, rate(m.admitted_per_s)), el("td", { class: "num" }, rate(m.denied_per_s)), el("td", { class: "num" }, m.keys));
      return tr;
    });
    if (!models.length) {
      const tr = el("tr", { class: "empty" });
      tr.appendChild(el("td", { colspan: 4 }, "no key named scope:model seen yet"));
      models.push(tr);
    }
    mb.replaceChildren(...models);
  }

  // The inputs the chosen algorithm does not use are disabled, so not sent:
  // the node refuses a value it would drop. Each input lists the algorithms
  // that use it.
  const algorithm = document.getElementById("f-algorithm");
  function enableUsed() {
    for (const input of document.querySelectorAll("#limit-form [data-algorithms]")) {
      input.disabled = !input.dataset.algorithms.split(" ").includes(algorithm.value);
    }
  }
  algorithm.addEventListener("change", enableUsed);
  enableUsed();

  // Picking a key fills the form with its limit.
  document.addEventListener("click", (ev) => {
    const a = ev.target.closest("a.pick");
    if (!a || !keysData) return;
    ev.preventDefault();
    const r = (keysData.keys || []).find((x) => x.key === a.dataset.key);
    document.getElementById("f-key").value = a.dataset.key;
    if (r && r.limit) {
      document.getElementById("f-algorithm").value = r.limit.algorithm;
      document.getElementById("f-limit").value = r.limit.limit;
      document.getElementById("f-per").value = r.limit.per;
      document.getElementById("f-burst").value = r.limit.burst || "";
      document.getElementById("f-slots").value = r.limit.slots || "";
      document.getElementById("f-max-lease").value = r.limit.max_lease === "0s" ? "" : r.limit.max_lease;
      document.getElementById("f-max-debt").value = r.limit.max_debt || "";
      document.getElementById("f-strict").checked = r.limit.strict;
      enableUsed();
    }
    document.getElementById("f-limit").focus();
  });

  async function poll() {
    try {
      const query = q && q.value ? "?q=" + encodeURIComponent(q.value) : "";
      const [c, k] = await Promise.all([
        fetch("/api/cluster", { cache: "no-store" }).then((r) => r.json()),
        fetch("/api/keys" + query, { cache: "no-store" }).then((r) => r.json()),
      ]);
      if (c.members) renderCluster(c);
      if (k.keys !== undefined) renderKeys(k);
      body.dataset.polls = String((Number(body.dataset.polls) || 0) + 1);
    } catch (e) {
      body.dataset.pollError = String(e);
    }
  }
  poll();
  setInterval(poll, interval);
})();

// meshwarden's web console: reads the control plane's JSON endpoints (/api/...), draws the
// graph with Cytoscape.js, and follows /api/events (server-sent events) for live updates.
// Every text from the server goes into the page through textContent, never as HTML.
"use strict";

const COLOURS = { allow: "#2e7d32", deny: "#c62828", "would-deny": "#ef8f00" };
const state = { cy: null, graph: null, config: {}, selected: null, refresh: null,
  refreshAgain: false, workloads: [], policies: null, events: 0 };
window.meshwardenConsole = state; // for scripts and the browser tests

const $ = (id) => document.getElementById(id);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

async function getJson(path) {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function hashRoute() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  return { path: path || "/graph", params: new URLSearchParams(query || "") };
}

// ---- the graph -------------------------------------------------------------------------

function graphParams() {
  const params = new URLSearchParams();
  for (const id of ["filter-namespace", "filter-identity", "filter-decision", "filter-minutes"]) {
    const input = $(id);
    if (input.value) params.set(input.name, input.value);
  }
  return params;
}

function elementsOf(graph) {
  const elements = graph.namespaces.map((ns) => ({ group: "nodes", data: { id: "ns:" + ns, label: ns, kind: "namespace" } }));
  for (const node of graph.nodes) {
    const data = { ...node, label: node.name };
    if (node.namespace && node.kind === "workload") data.parent = "ns:" + node.namespace;
    elements.push({ group: "nodes", data });
  }
  for (const edge of graph.edges) {
    elements.push({ group: "edges", data: { ...edge, label: String(edge.port) } });
  }
  return elements;
}

function graphStyle() {
  return [
    { selector: "node", style: { label: "data(label)", "font-size": 11, "text-valign": "bottom",
      "text-margin-y": 4, "background-color": "#3c6db0", width: 28, height: 28 } },
    { selector: 'node[kind = "namespace"]', style: { "background-color": "#eef2f8",
      "border-color": "#9fb3cf", "border-width": 1, "text-valign": "top", "font-weight": "bold",
      shape: "round-rectangle" } },
    { selector: 'node[sync = "STALE"]', style: { "border-width": 3, "border-color": COLOURS["would-deny"] } },
    { selector: 'node[sync = "NACK"], node[sync = "PROBLEM"]', style: { "border-width": 4, "border-color": COLOURS.deny } },
    { selector: 'node[sync = "NONE"]', style: { "background-color": "#a9b8cc" } },
    { selector: 'node[kind = "plaintext"]', style: { shape: "diamond", "background-color": "#8a8a8a" } },
    { selector: 'node[kind = "identity"]', style: { shape: "hexagon", "background-color": "#7b5ea7" } },
    { selector: "edge", style: { width: 3, "curve-style": "bezier", "target-arrow-shape": "triangle",
      label: "data(label)", "font-size": 10, "text-background-color": "#fff",
      "text-background-opacity": 1 } },
    ...Object.entries(COLOURS).map(([decision, colour]) => ({
      selector: `edge[decision = "${decision}"]`,
      style: { "line-color": colour, "target-arrow-color": colour } })),
    { selector: "edge[?plaintext]", style: { "line-style": "dashed" } },
    { selector: ":selected", style: { "overlay-color": "#1a73e8", "overlay-opacity": 0.25 } },
  ];
}

function drawGraph(graph) {
  const elements = elementsOf(graph);
  if (!state.cy) {
    state.cy = cytoscape({ container: $("cy"), elements, style: graphStyle(),
      layout: { name: "cose", animate: false, randomize: false, nodeDimensionsIncludeLabels: true },
      wheelSensitivity: 0.3 });
    state.cy.on("tap", "edge", (event) => selectEdge(event.target.id()));
    state.cy.on("tap", 'node[kind != "namespace"]', (event) => selectNode(event.target.id()));
    return;
  }
  const cy = state.cy;
  const wanted = new Set(elements.map((e) => e.data.id));
  let changed = false;
  cy.elements().forEach((element) => { if (!wanted.has(element.id())) { element.remove(); changed = true; } });
  for (const element of elements) {
    const existing = cy.getElementById(element.data.id);
    if (existing.nonempty()) existing.data(element.data);
    else { cy.add(element); changed = true; }
  }
  if (changed) cy.layout({ name: "cose", animate: false, randomize: false, nodeDimensionsIncludeLabels: true }).run();
}

function causeLink(cause) {
  const match = /^([^/#:]+)\/([^#]+)(?:#(\d+))?$/.exec(cause.cause);
  if (!match) return el("span", cause.cause, { class: "cause" });
  const rule = match[3] !== undefined ? "?rule=" + match[3] : "";
  return el("a", cause.cause, { href: `#/policies/${match[1]}/${match[2]}${rule}`, class: "cause" });
}

function edgeTable(graph) {
  const body = $("edges").querySelector("tbody");
  body.replaceChildren();
  for (const edge of graph.edges) {
    const row = el("tr", null, { "data-edge": edge.id });
    if (state.selected === "edge:" + edge.id) row.classList.add("selected");
    row.append(el("td", edge.source), el("td", edge.target), el("td", edge.port),
      el("td", edge.decision, { class: "decision-" + edge.decision }), el("td", edge.counts.allow),
      el("td", edge.counts.deny), el("td", edge.counts.wouldDeny));
    const causes = el("td");
    edge.causes.forEach((cause, i) => { if (i) causes.append(", "); causes.append(causeLink(cause)); });
    row.append(causes);
    row.addEventListener("click", () => selectEdge(edge.id));
    body.append(row);
  }
}

function fillNamespaces(graph) {
  const select = $("filter-namespace");
  const current = select.value;
  const names = new Set([...graph.namespaces, current].filter(Boolean));
  select.replaceChildren(el("option", "all", { value: "" }));
  for (const ns of [...names].sort()) select.append(el("option", ns, { value: ns }));
  select.value = current;
}

async function refreshGraph() {
  try {
    const graph = await getJson("/api/graph?" + graphParams());
    state.graph = graph;
    $("policy-version").textContent = graph.policyVersion || "none";
    $("mesh-status").textContent = graph.status || "?";
    fillNamespaces(graph);
    drawGraph(graph);
    edgeTable(graph);
    if (state.selected) showSelected(); else showOverview(graph);
  } catch (error) {
    showBanner("graph: " + error.message);
  }
}

function scheduleRefresh() {
  // at most one redraw a second however many records arrive (each is one /api/graph request);
  // a record announced while a request is under way asks for one more after it: that request's
  // answer may have been built before the record was stored
  if (state.refresh) { state.refreshAgain = true; return; }
  const wait = Math.max(0, 1000 - (Date.now() - (state.lastRefresh || 0)));
  state.refresh = setTimeout(async () => {
    state.lastRefresh = Date.now();
    state.refreshAgain = false;
    await refreshGraph();
    state.refresh = null;
    if (state.refreshAgain) scheduleRefresh();
  }, Math.max(wait, 100));
}

function showFilters(params) {
  for (const id of ["filter-namespace", "filter-identity", "filter-decision", "filter-minutes"]) {
    const input = $(id);
    const value = params.get(input.name);
    if (input.tagName === "SELECT" && value && ![...input.options].some((o) => o.value === value)) {
      input.append(el("option", value, { value }));
    }
    input.value = value || (input.name === "minutes" ? "15" : "");
  }
}

function showOverview(graph) {
  // nothing selected: every workload's sidecar state, the ones needing a look first
  const details = $("details");
  const workloads = graph.nodes.filter((n) => n.kind === "workload");
  const order = { PROBLEM: 0, NACK: 1, STALE: 2, NONE: 3, SYNCED: 4 };
  workloads.sort((a, b) => (order[a.sync] ?? 5) - (order[b.sync] ?? 5) || a.id.localeCompare(b.id));
  const synced = workloads.filter((n) => n.sync === "SYNCED").length;
  details.replaceChildren(el("p", "Click an edge or a workload for its flows, causes and sync state.", { class: "hint" }),
    el("h4", `Sidecars: ${synced} of ${workloads.length} in sync`));
  const list = el("ul", null, { id: "sidecar-overview" });
  for (const node of workloads) {
    const item = el("li");
    item.append(el("b", node.id), " ", el("span", node.sync, { class: "sync-" + node.sync }), node.syncReason ? " — " + node.syncReason : "");
    list.append(item);
  }
  details.append(list);
}

function showSelected() {
  const kind = state.selected.startsWith("edge:") ? "edge" : "node";
  const id = state.selected.slice(kind.length + 1);
  if (kind === "edge") showEdge(id); else showNode(id);
}

function selectEdge(id) {
  state.selected = "edge:" + id;
  state.cy.elements().unselect();
  state.cy.getElementById(id).select();
  showEdge(id);
  edgeTable(state.graph);
}

function selectNode(id) {
  state.selected = "node:" + id;
  showNode(id);
}

function traceLink(traceId) {
  if (!traceId) return el("span", "—");
  if (!state.config.traceUrl) return el("code", traceId.slice(0, 16) + "…", { title: traceId });
  const url = state.config.traceUrl.replace("{traceId}", encodeURIComponent(traceId));
  return el("a", traceId.slice(0, 16) + "…", { href: url, target: "_blank", rel: "noopener noreferrer", title: traceId });
}

function explainLink(flow) {
  const params = new URLSearchParams({ to: flow.workload, port: flow.port });
  const owner = state.graph.nodes.find((n) => n.kind === "workload" && n.identity === flow.sourceIdentity);
  if (owner) params.set("fromWorkload", owner.id);
  else if (flow.sourceIdentity) params.set("from", flow.sourceIdentity);
  if (flow.sourceIp && !owner) params.set("sourceIp", flow.sourceIp);
  if (flow.method) params.set("method", flow.method);
  if (flow.path) params.set("path", flow.path);
  return el("a", "explain", { href: "#/explain?" + params });
}

async function showEdge(id) {
  const details = $("details");
  let edge;
  try {
    edge = await getJson(`/api/edge?minutes=${$("filter-minutes").value || 15}&id=${encodeURIComponent(id)}`);
  } catch (error) {
    details.replaceChildren(el("p", error.message, { class: "hint" }));
    return;
  }
  details.replaceChildren();
  details.append(el("h3", `${edge.source} → ${edge.target}:${edge.port}`, { id: "details-title" }));
  const summary = el("p");
  summary.append("newest: ", el("span", edge.decision, { class: "decision-" + edge.decision, id: "edge-decision" }),
    ` · ${edge.counts.allow} allowed, ${edge.counts.deny} denied, ${edge.counts.wouldDeny} would deny · policy version ${state.graph.policyVersion}`);
  details.append(summary, el("h4", "Causes"));
  const causes = el("ul", null, { id: "edge-causes" });
  for (const cause of edge.causes) {
    const item = el("li");
    item.append(el("span", cause.decision, { class: "decision-" + cause.decision }), " ", causeLink(cause), ` × ${cause.count}`);
    causes.append(item);
  }
  details.append(causes, el("h4", "Newest requests"));
  const table = el("table", null, { id: "edge-flows" });
  table.append(el("tr")); table.firstChild.append(...["time", "request", "status", "decision", "cause", "dry-run", "trace", ""].map((h) => el("th", h)));
  for (const flow of edge.flows) {
    const row = el("tr");
    const cause = flow.rule === null ? flow.policy : `${flow.policy}#${flow.rule}`;
    const dry = flow.dryRun ? `${flow.dryRun.decision} (${flow.dryRun.policy})` : "";
    const request = flow.method ? `${flow.method} ${flow.path}` : flow.protocol;
    const causeCell = el("td"); causeCell.append(causeLink({ cause }));
    const traceCell = el("td"); traceCell.append(traceLink(flow.traceId));
    const explainCell = el("td"); explainCell.append(explainLink(flow));
    row.append(el("td", flow.time.slice(11, 23)), el("td", request), el("td", flow.status ?? ""),
      el("td", flow.decision, { class: "decision-" + flow.decision }), causeCell, el("td", dry), traceCell, explainCell);
    table.append(row);
  }
  details.append(table);
}

function definitionList(pairs) {
  const list = el("dl");
  for (const [term, value] of pairs) list.append(el("dt", term), el("dd", value ?? "—"));
  return list;
}

function sidecarText(w) {
  const sidecar = w.sidecar || {};
  const parts = [w.sync + (w.syncReason ? ": " + w.syncReason : "")];
  if (sidecar.streams !== undefined) parts.push(`${sidecar.streams} stream(s)`);
  if (sidecar.replica) parts.push("replica " + sidecar.replica);
  for (const r of sidecar.rejections || []) parts.push(`rejected ${r.type} ${r.version}: ${r.error}`);
  return parts.join(", ");
}

async function showNode(id) {
  const details = $("details");
  const node = (state.graph.nodes || []).find((n) => n.id === id) || { id, kind: "workload" };
  details.replaceChildren(el("h3", id, { id: "details-title" }));
  if (node.kind !== "workload") {
    const what = node.kind === "plaintext" ? "a plaintext peer (no identity): only ipBlocks rules can match it" : "an identity outside this mesh's workloads";
    details.append(definitionList([["kind", what], ["identity", node.identity], ["address", node.kind === "plaintext" ? node.name : null]]));
    return;
  }
  try {
    const w = await getJson("/api/workload?ref=" + encodeURIComponent(id));
    details.append(definitionList([
      ["identity", w.identity], ["SVID expires", w.svidExpires || "not known here (each node's agent holds the SVIDs)"],
      ["sidecar", sidecarText(w)], ["addresses", w.addresses.join(", ")],
      ["ports", w.ports.map((p) => `${p.port}/${p.protocol}`).join(", ")],
      ["labels", Object.entries(w.labels).map(([k, v]) => `${k}=${v}`).join(", ")],
    ]));
    details.append(el("h4", "Policies selecting it"));
    const list = el("ul");
    for (const ref of w.policies) { const item = el("li"); item.append(causeLink({ cause: ref })); list.append(item); }
    details.append(list);
  } catch (error) {
    details.append(el("p", error.message, { class: "error" }));
  }
}

// ---- explain ---------------------------------------------------------------------------

const EXPLAIN_FIELDS = ["to", "port", "fromWorkload", "from", "sourceIp", "method", "path", "host", "headers", "jwtClaims"];

function fillExplainForm(params) {
  const form = $("explain-form");
  for (const select of [$("explain-to"), $("explain-from-workload")]) {
    if (select.options.length > 1) continue;
    for (const ref of state.workloads) select.append(el("option", ref, { value: ref }));
  }
  for (const name of EXPLAIN_FIELDS) form.elements[name].value = params.get(name) || "";
  if (!params.get("to")) form.elements.to.selectedIndex = 0;
}

function formParams() {
  const form = $("explain-form");
  const params = new URLSearchParams();
  for (const name of EXPLAIN_FIELDS) if (form.elements[name].value.trim()) params.set(name, form.elements[name].value.trim());
  return params;
}

async function runExplain(params) {
  $("explain-error").hidden = true;
  try {
    const answer = await getJson("/api/explain?" + params);
    $("explain-result").hidden = false;
    $("explain-verdict").textContent = answer.decision;
    $("explain-verdict").className = "verdict " + answer.decision;
    const cause = answer.rule === null ? answer.policy : `${answer.policy}#${answer.rule}`;
    $("explain-cause").replaceWith(Object.assign(causeLink({ cause }), { id: "explain-cause" }));
    $("explain-reason").textContent = "— " + answer.reason;
    const trace = $("explain-trace");
    trace.replaceChildren();
    for (const t of answer.trace) {
      const mode = t.mode === "dry-run" ? ", dry-run" : "";
      const item = el("li", `${t.policy} [${t.action}${mode}] ${t.matched ? "rule " + t.rule + " matched" : "no rule matched"}${t.note ? " — " + t.note : ""}`);
      const reasons = el("ul");
      for (const r of t.rules) reasons.append(el("li", `rule ${r.index}: ${r.matched ? "MATCHED" : r.reason}`));
      item.append(reasons);
      trace.append(item);
    }
    if (answer.egress) {
      const e = answer.egress;
      const cause = e.rule === null ? e.policy : `${e.policy}#${e.rule}`;
      const item = el("li", `egress at the source (${answer.direction}): ${e.decision} by ${cause} — ${e.reason}`);
      const policies = el("ul");
      for (const t of e.trace) policies.append(el("li", `${t.policy} [${t.action}] ${t.matched ? "rule " + t.rule + " matched" : "no rule matched"}`));
      item.append(policies);
      trace.append(item);
    }
    for (const o of answer.dryRun) trace.append(el("li", `dry-run: ${o.policy} would ${o.decision}` + (o.rule !== null && o.rule !== undefined ? ` (rule ${o.rule})` : "")));
    $("explain-json").textContent = JSON.stringify(answer, null, 2);
  } catch (error) {
    $("explain-result").hidden = true;
    $("explain-error").hidden = false;
    $("explain-error").textContent = error.message;
  }
}

// ---- policies --------------------------------------------------------------------------

async function loadPolicies() {
  const view = await getJson("/api/policies");
  state.policies = view;
  $("policies-dir").textContent = view.directory + " · version " + (view.version || "none");
  const rejected = $("policies-rejected");
  rejected.hidden = !view.rejectedChange.length;
  rejected.textContent = "The last change was rejected (the version above keeps serving): " + view.rejectedChange.join(" | ");
  const diagnostics = $("diagnostics");
  diagnostics.replaceChildren();
  if (!view.diagnostics.length) diagnostics.append(el("li", "no problems"));
  for (const d of view.diagnostics) diagnostics.append(el("li", `${d.file}:${d.line}:${d.column}: ${d.severity}: ${d.message}`, { class: d.severity === "error" ? "error" : "" }));
  const list = $("policy-list");
  list.replaceChildren();
  for (const [ns, documents] of Object.entries(view.namespaces)) {
    list.append(el("h4", ns));
    for (const doc of documents) {
      const label = `${doc.kind} ${doc.name}` + (doc.action ? ` (${doc.action}${doc.mode === "dry-run" ? ", dry-run" : ""})` : "");
      list.append(el("a", label, { href: `#/policies/${doc.namespace}/${doc.name}`, "data-ref": doc.ref, "data-kind": doc.kind }));
    }
  }
  if (view.history) await loadHistory();
  else $("history").textContent = "Revision history and diffs come with the policy store (server --store); this control plane reads a directory, so there is none to show.";
}

async function loadHistory() {
  const history = $("history");
  try {
    const found = await getJson("/api/history");
    const table = el("table", null, { id: "revisions" });
    const head = el("tr");
    head.append(...["revision", "time", "who", "message", "files", ""].map((h) => el("th", h)));
    table.append(head);
    for (const r of found.revisions) {
      const row = el("tr");
      const label = r.revision + (r.revision === found.head ? " (serving)" : "") + (r.rollbackOf ? ` (rollback of ${r.rollbackOf})` : "");
      const diff = el("td");
      if (r.revision > 1) diff.append(el("a", `diff with ${r.revision - 1}`, { href: `#/policies?diff=${r.revision}` }));
      row.append(el("td", label), el("td", r.time), el("td", r.who), el("td", r.message), el("td", r.files), diff);
      table.append(row);
    }
    history.replaceChildren(table);
  } catch (error) {
    history.replaceChildren(el("p", "history: " + error.message, { class: "error" }));
  }
}

async function showDiff(revision) {
  const box = $("diff");
  box.hidden = false;
  box.replaceChildren(el("h4", `Revision ${revision - 1} → ${revision}`));
  try {
    const diff = await getJson(`/api/diff?from=${revision - 1}&to=${revision}`);
    const documents = el("ul", null, { id: "diff-documents" });
    if (!diff.documents.length) documents.append(el("li", "no document changed"));
    for (const d of diff.documents) documents.append(el("li", `${d.change} ${d.document} (${d.file})`));
    const workloads = el("ul", null, { id: "diff-workloads" });
    for (const w of diff.workloads) workloads.append(el("li", `${w.change} ${w.workload}`));
    box.append(documents, el("p", "workloads whose authorization changed:"), workloads);
  } catch (error) {
    box.append(el("p", error.message, { class: "error" }));
  }
}

function showSource(ref, rule) {
  const docs = Object.values(state.policies.namespaces).flat();
  const doc = docs.find((d) => d.ref === ref && d.kind === "AuthorizationPolicy") || docs.find((d) => d.ref === ref);
  const source = $("source");
  source.replaceChildren();
  for (const link of $("policy-list").querySelectorAll("a")) link.classList.toggle("current", link.dataset.ref === ref);
  if (!doc) { $("source-title").textContent = `${ref}: not in the running version`; return; }
  const text = state.policies.files[doc.file];
  $("source-title").textContent = `${doc.kind} ${doc.ref} — ${doc.file}:${doc.lines[0]}-${doc.lines[1]}` + (rule !== null ? ` — rule ${rule}` : "");
  if (text === null) { source.append(el("p", "(its text is not shown: the file is too large or unreadable here, or it lives in the policy store)")); return; }
  const ruleLines = rule !== null && doc.rules[rule] ? doc.rules[rule].lines : null;
  text.split("\n").forEach((line, i) => {
    const n = i + 1;
    const row = el("div", null, { class: "line", "data-line": n });
    if (n >= doc.lines[0] && n <= doc.lines[1]) row.classList.add("doc");
    if (ruleLines && n >= ruleLines[0] && n <= ruleLines[1]) row.classList.add("rule");
    row.append(el("span", n, { class: "n" }), line);
    source.append(row);
  });
  const first = source.querySelector(".line.rule") || source.querySelector(".line.doc");
  if (first) first.scrollIntoView({ block: "center" });
}

// ---- page ------------------------------------------------------------------------------

function showBanner(text) { const banner = $("banner"); banner.hidden = !text; banner.textContent = text || ""; }

async function route() {
  const { path, params } = hashRoute();
  const view = path.split("/")[1] || "graph";
  for (const name of ["graph", "explain", "policies"]) {
    $("view-" + name).hidden = name !== view;
    $("nav-" + name).classList.toggle("current", name === view);
  }
  if (view === "graph") { showFilters(params); await refreshGraph(); if (state.cy) state.cy.resize(); }
  if (view === "explain") {
    fillExplainForm(params);
    if (params.get("to") && params.get("port")) await runExplain(params);
  }
  if (view === "policies") {
    await loadPolicies();
    const [, , ns, name] = path.split("/");
    if (ns && name) showSource(`${ns}/${name}`, params.has("rule") ? Number(params.get("rule")) : null);
    if (params.has("diff")) await showDiff(Number(params.get("diff"))); else $("diff").hidden = true;
  }
  document.body.dataset.ready = view; // the view has its data
}

function followEvents() {
  const events = new EventSource("/api/events");
  const live = $("live");
  events.onopen = () => { live.className = "on"; live.textContent = "live"; };
  events.onerror = () => { live.className = "off"; live.textContent = "live updates reconnecting…"; };
  events.addEventListener("flow", () => { state.events += 1; if (hashRoute().path.startsWith("/graph")) scheduleRefresh(); });
  events.addEventListener("policies", (event) => {
    const change = JSON.parse(event.data);
    $("policy-version").textContent = change.version || "none";
    showBanner(change.errors.length ? "The last policy change was rejected; still serving " + change.version + ": " + change.errors.join(" | ") : "");
    if (hashRoute().path.startsWith("/graph")) scheduleRefresh();
  });
}

async function start() {
  state.config = await getJson("/api/config");
  $("trust-domain").textContent = state.config.trustDomain || "?";
  const graph = await getJson("/api/graph");
  state.workloads = graph.nodes.filter((n) => n.kind === "workload").map((n) => n.id).sort();
  const filter = (event) => {
    event.preventDefault();
    const hash = "#/graph?" + graphParams();
    if (location.hash === hash) refreshGraph(); else location.hash = hash;
  };
  $("graph-filters").addEventListener("submit", filter);
  for (const id of ["filter-namespace", "filter-decision"]) $(id).addEventListener("change", filter);
  $("explain-form").addEventListener("submit", (event) => { event.preventDefault(); location.hash = "#/explain?" + formParams(); });
  window.addEventListener("hashchange", route);
  followEvents();
  await route();
}

document.addEventListener("DOMContentLoaded", () => start().catch((error) => showBanner("console: " + error.message)));

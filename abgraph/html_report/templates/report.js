// The report's behaviour: node panel, tag filter, paged sortable table, graph
// expansion and the diff of two picked nodes. Plain JavaScript, no library.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("abgraph-data").textContent);
  const C = {};
  data.columns.forEach((name, i) => { C[name] = i; });
  const rows = data.rows;
  const N = rows.length;
  const indexOf = new Map(rows.map((row, i) => [row[C.id], i]));
  const PAGE = 100, LISTED = 500;
  const $ = (id) => document.getElementById(id);
  const state = { matches: null, selected: null, pickA: null, pickB: null, sort: null, page: 0, group: "" };

  // -- reading a row -----------------------------------------------------------
  const recipeName = (i) => data.recipes[rows[i][C.recipe]].split(".").pop();
  const tagsOf = (i) => rows[i][C.tags].map((t) => data.tags[t]);
  const propertiesOf = (i) => data.properties[rows[i][C.properties]];
  const shownValues = (i) => (recipeName(i) === "root" ? propertiesOf(i) : rows[i][C.recipe_properties]);
  const shortId = (i) => rows[i][C.id].slice(0, 12);
  const childrenOf = (i) => data.children[i] || [];

  function repr(value) {
    if (typeof value === "string") return "'" + value + "'";
    if (value === null || value === undefined) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (Array.isArray(value)) return "[" + value.map(repr).join(", ") + "]";
    if (typeof value === "object") return "{" + Object.keys(value).map((k) => repr(k) + ": " + repr(value[k])).join(", ") + "}";
    return String(value);
  }
  function show(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") {
      if (Number.isInteger(value)) return String(value);
      const text = value.toPrecision(4);
      return text.includes(".") && !text.includes("e") ? text.replace(/\.?0+$/, "") : text;
    }
    if (Array.isArray(value) && value.length > 3)  // a loss history: its length and ends, as `abgraph diff`
      return "[" + value.length + ": " + show(value[0]) + " … " + show(value[value.length - 1]) + "]";
    if (Array.isArray(value)) return "[" + value.map(show).join(", ") + "]";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }
  function label(i) {
    const values = shownValues(i);
    return recipeName(i) + "(" + Object.keys(values).map((k) => k + "=" + repr(values[k])).join(", ") + ")";
  }
  function esc(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  function link(i) {
    return '<a data-node="' + i + '" title="' + esc(rows[i][C.id]) + '">' + esc(shortId(i)) + "</a> " + esc(label(i));
  }
  function table(pairs) {
    return "<table>" + pairs.map(([k, v]) => "<tr><th>" + esc(k) + "</th><td>" + v + "</td></tr>").join("") + "</table>";
  }

  // -- the tag filter: same syntax as NodeSet.filter ---------------------------
  function globToRegExp(glob) {
    let out = "", i = 0;
    while (i < glob.length) {
      const c = glob[i++];
      if (c === "*") out += ".*";
      else if (c === "?") out += ".";
      else if (c === "[") {
        let j = i;
        if (glob[j] === "!") j++;
        if (glob[j] === "]") j++;
        while (j < glob.length && glob[j] !== "]") j++;
        if (j >= glob.length) { out += "\\["; continue; }
        let inside = glob.slice(i, j).replace(/\\/g, "\\\\");
        i = j + 1;
        if (inside[0] === "!") inside = "^" + inside.slice(1);
        else if (inside[0] === "^") inside = "\\" + inside;
        out += "[" + inside + "]";
      } else out += c.replace(/[.*+?^${}()|[\]\\\/-]/g, "\\$&");
    }
    return new RegExp("^(?:" + out + ")$", "s");
  }
  function parsePattern(pattern) {
    return pattern.split("|").map((alternative) => alternative.split("&").map((term) => {
      term = term.trim();
      const negate = term.startsWith("!");
      const glob = negate ? term.slice(1).trim() : term;
      if (!glob) throw new Error("empty term: write globs joined by & (both) or | (either), each maybe prefixed by ! (not)");
      return [negate, glob];
    }));
  }
  let tagNodes = null;  // tag position -> node rows, built on first use
  function nodesWithTag() {
    if (tagNodes === null) {
      tagNodes = data.tags.map(() => []);
      for (let i = 0; i < N; i++) for (const t of rows[i][C.tags]) tagNodes[t].push(i);
    }
    return tagNodes;
  }
  function matching(pattern) {
    const withTag = nodesWithTag();
    const result = new Uint8Array(N);
    for (const alternative of parsePattern(pattern)) {
      let both = null;
      for (const [negate, glob] of alternative) {
        const regexp = globToRegExp(glob);
        const found = new Uint8Array(N);
        data.tags.forEach((tag, t) => { if (regexp.test(tag)) for (const i of withTag[t]) found[i] = 1; });
        if (negate) for (let i = 0; i < N; i++) found[i] = 1 - found[i];
        if (both === null) both = found; else for (let i = 0; i < N; i++) both[i] &= found[i];
      }
      for (let i = 0; i < N; i++) result[i] |= both[i];
    }
    const list = [];
    for (let i = 0; i < N; i++) if (result[i]) list.push(i);
    return list;
  }
  function applyFilter() {
    const input = $("filter"), pattern = input.value.trim();
    input.classList.remove("invalid");
    if (!pattern) { setMatches(null, ""); return; }
    try {
      setMatches(matching(pattern), "tags matching " + pattern);
    } catch (error) {
      input.classList.add("invalid");
      $("filter-status").textContent = error.message;
    }
  }
  function setMatches(list, why) {
    state.matches = list;
    state.page = 0;
    $("filter-status").textContent = list === null ? "" : list.length.toLocaleString("en") + " of " + N.toLocaleString("en") + " nodes: " + why;
    const area = $("matches-area");
    area.hidden = list === null;
    if (list !== null) {
      $("match-count").textContent = "(" + list.length.toLocaleString("en") + ")";
      const shown = list.slice(0, LISTED).map((i) => "<li>" + link(i) + "</li>");
      if (list.length > LISTED) shown.push('<li class="muted">… and ' + (list.length - LISTED).toLocaleString("en") + " more (see the table)</li>");
      $("matches").innerHTML = shown.join("");
    }
    highlight();
    renderTable();
  }

  // -- the graph -----------------------------------------------------------------
  const visibleGraph = () => document.querySelector('.graph-view[data-group="' + CSS.escape(state.group) + '"]');
  const titleOf = (g) => { const t = g.querySelector("title"); return t ? t.textContent : ""; };
  function membersOf(key) {
    if (key.startsWith("group/")) return (data.groups[key] || {}).members || [];
    if (key.startsWith("sub/")) {
      const group = key.slice(4, key.lastIndexOf("/"));
      return ((data.groups[group] || {}).subgroups || {})[key] || [];
    }
    return [];
  }
  function highlight() {
    const graph = visibleGraph();
    if (!graph) return;
    const matched = state.matches === null ? null : new Set(state.matches);
    for (const g of graph.querySelectorAll("g.node")) {
      const key = titleOf(g), i = indexOf.get(key);
      let hit = false;
      if (matched !== null) hit = i !== undefined ? matched.has(i) : membersOf(key).some((m) => matched.has(m));
      g.classList.toggle("match", hit);
      g.classList.toggle("selected", i !== undefined && i === state.selected);
      g.classList.toggle("pick-a", i !== undefined && i === state.pickA);
      g.classList.toggle("pick-b", i !== undefined && i === state.pickB);
    }
  }
  function showGroup(key) {
    state.group = key;
    for (const graph of document.querySelectorAll(".graph-view")) graph.hidden = graph.dataset.group !== key;
    let crumbs = '<a href="#" data-group="">overview</a>';
    if (key) crumbs += " › " + esc(key.split("/").slice(2).join("/") + " at depth " + key.split("/")[1]) +
      ' <span class="muted">(' + membersOf(key).length.toLocaleString("en") + " nodes)</span>";
    $("crumbs").innerHTML = crumbs;
    highlight();
    scrollToRoots();
  }
  // A drawing wider than its pane opens on its top row (the roots), not on its left edge.
  function scrollToRoots() {
    const area = $("graph-area");
    const view = document.querySelector(".graph-view:not([hidden])");
    const boxes = view ? [...view.querySelectorAll("g.node")].map((g) => g.getBoundingClientRect()) : [];
    if (!boxes.length) return;
    const top = Math.min(...boxes.map((b) => b.top));
    const roots = boxes.filter((b) => b.top - top < 1).sort((a, b) => a.left - b.left);
    let left = roots[0].left, right = Math.max(...roots.map((b) => b.right));
    if (right - left > area.clientWidth) right = roots[0].right;  // too wide: the first root in the middle
    area.scrollLeft = (left + right) / 2 + area.scrollLeft - area.getBoundingClientRect().left - area.clientWidth / 2;
    area.scrollTop = 0;
  }
  function groupOf(i) {
    for (const key in data.groups) if (data.groups[key].members.includes(i)) return key;
    return "";
  }
  document.addEventListener("click", (event) => {
    const node = event.target.closest("g.node");
    if (node) {
      const key = titleOf(node);
      if (indexOf.has(key)) select(indexOf.get(key));
      else if (key.startsWith("group/")) showGroup(key);
      else if (key.startsWith("sub/")) setMatches(membersOf(key), "the tag group " + node.querySelector("text").textContent);
      return;
    }
    const anchor = event.target.closest("a[data-node], a[data-group]");
    if (anchor) {
      event.preventDefault();
      if (anchor.dataset.node !== undefined) select(Number(anchor.dataset.node));
      else showGroup(anchor.dataset.group);
      return;
    }
    const row = event.target.closest("#table tbody tr");
    if (row) select(Number(row.dataset.node));
  });

  // -- the node panel --------------------------------------------------------------
  function select(i) {
    state.selected = i;
    const row = rows[i];
    if (data.groups && Object.keys(data.groups).length && state.group && !membersOf(state.group).includes(i)) showGroup(groupOf(i));
    const status = data.statuses[row[C.status]];
    const metrics = row[C.metrics];
    const env = data.environments[row[C.environment]];
    const pairs = [
      ["id", esc(row[C.id])],
      ["recipe", "<b>" + esc(label(i)) + "</b>"],
      ["code version", esc(data.versions[row[C.version]] || "–")],
      ["status", '<span class="status-' + esc(status) + '">' + esc(status) + "</span>"],
      ["tags", tagsOf(i).map((t) => '<span class="tag">' + esc(t) + "</span>").join("") || "–"],
      ["depth", String(row[C.depth])],
      ["duration", row[C.duration] === null ? "–" : row[C.duration].toFixed(3) + " s"],
      ["started", row[C.started] ? new Date(row[C.started] * 1000).toISOString().replace("T", " ").slice(0, 19) : "–"],
    ];
    const props = propertiesOf(i);
    const sections = ["<h3>" + esc(label(i)) + "</h3>", table(pairs),
      '<p><button type="button" id="set-a">set as A</button> <button type="button" id="set-b">set as B</button></p>'];
    if (recipeName(i) !== "root" && Object.keys(row[C.recipe_properties]).length)
      sections.push("<h3>Recipe properties</h3>" + table(Object.entries(row[C.recipe_properties]).map(([k, v]) => [k, esc(show(v))])));
    sections.push("<h3>State properties</h3>" + table(Object.entries(props).map(([k, v]) => [k, esc(show(v))])));
    sections.push('<h3>Metrics and probe results</h3><div id="panel-metrics">' + (Object.keys(metrics).length ?
      table(Object.keys(metrics).sort().map((k) => [k, esc(show(metrics[k]))])) : '<p class="muted">none</p>') + "</div>");
    const parents = row[C.parents].map((p) => "<li>" + link(p) + "</li>").concat(row[C.outside_parents].map((p) => "<li>" + esc(p.slice(0, 12)) + " (not in this report)</li>"));
    const kids = childrenOf(i);
    sections.push("<h3>Parents</h3><ul id='panel-parents'>" + (parents.join("") || "<li class='muted'>none: a root</li>") + "</ul>");
    sections.push("<h3>Children</h3><ul id='panel-children'>" + (kids.slice(0, LISTED).map((c) => "<li>" + link(c) + "</li>").join("") || "<li class='muted'>none</li>") +
      (kids.length > LISTED ? "<li class='muted'>… " + (kids.length - LISTED) + " more</li>" : "") + "</ul>");
    if (env && Object.keys(env).length) sections.push("<h3>Environment</h3>" + table(Object.entries(env).map(([k, v]) => [k, esc(show(v))])));
    if (row[C.error]) sections.push("<h3>Error</h3><pre id='panel-error'>" + esc(row[C.error]) + "</pre>");
    const panel = $("panel");
    panel.innerHTML = sections.join("");
    panel.dataset.node = row[C.id];
    panel.scrollTop = 0;
    $("set-a").onclick = () => pick("A", i);
    $("set-b").onclick = () => pick("B", i);
    highlight();
  }

  // -- diff of two picked nodes: the same answer as node.diff(other) ---------------
  function pick(which, i) {
    if (which === "A") state.pickA = i; else state.pickB = i;
    $("pick-a").textContent = state.pickA === null ? "A: –" : "A: " + shortId(state.pickA);
    $("pick-b").textContent = state.pickB === null ? "B: –" : "B: " + shortId(state.pickB);
    highlight();
    if (state.pickA !== null && state.pickB !== null) showDiff(state.pickA, state.pickB);
  }
  $("clear-picks").onclick = () => { state.pickA = state.pickB = null; pick("A", null); };
  function ancestors(i) {
    const seen = new Set([i]), frontier = [i];
    while (frontier.length) for (const p of rows[frontier.pop()][C.parents]) if (!seen.has(p)) { seen.add(p); frontier.push(p); }
    return seen;
  }
  function commonAncestor(a, b) {
    const mine = ancestors(a), theirs = ancestors(b);
    let best = null;
    for (const n of mine) {
      if (!theirs.has(n)) continue;
      if (best === null || rows[n][C.depth] > rows[best][C.depth] ||
          (rows[n][C.depth] === rows[best][C.depth] && rows[n][C.id] > rows[best][C.id])) best = n;
    }
    return best;
  }
  function path(ancestor, i) {
    const chain = [];
    let current = i;
    while (current !== ancestor && current !== null) {
      chain.push(current);
      const toward = rows[current][C.parents].filter((p) => ancestor === null || ancestors(p).has(ancestor));
      current = toward.length ? toward[0] : null;
    }
    return chain.reverse();
  }
  function differing(x, y) {
    const out = {};
    for (const k of [...new Set(Object.keys(x).concat(Object.keys(y)))].sort())
      if (JSON.stringify(x[k]) !== JSON.stringify(y[k])) out[k] = [x[k] === undefined ? null : x[k], y[k] === undefined ? null : y[k]];
    return out;
  }
  function diff(a, b) {
    const ancestor = commonAncestor(a, b);
    const sideA = path(ancestor, a), sideB = path(ancestor, b);
    const steps = [];
    for (let s = 0; s < Math.max(sideA.length, sideB.length); s++) {
      const x = s < sideA.length ? sideA[s] : null, y = s < sideB.length ? sideB[s] : null;
      const step = { position: s + 1, a: x === null ? null : label(x), b: y === null ? null : label(y), properties: {}, code_changed: false };
      if (x !== null && y !== null && rows[x][C.recipe] === rows[y][C.recipe]) {
        step.properties = differing(shownValues(x), shownValues(y));
        step.code_changed = rows[x][C.version] !== rows[y][C.version];
      }
      steps.push(step);
    }
    const metricsA = rows[a][C.metrics], metricsB = rows[b][C.metrics], metrics = {};
    for (const k of [...new Set(Object.keys(metricsA).concat(Object.keys(metricsB)))].sort()) {
      const x = k in metricsA ? metricsA[k] : null, y = k in metricsB ? metricsB[k] : null;
      metrics[k] = [x, y, typeof x === "number" && typeof y === "number" ? y - x : null];
    }
    return { a: rows[a][C.id], b: rows[b][C.id], ancestor: ancestor === null ? null : rows[ancestor][C.id],
      path_a: sideA.map(label), path_b: sideB.map(label), steps,
      properties: differing(propertiesOf(a), propertiesOf(b)), tags_a: tagsOf(a), tags_b: tagsOf(b),
      metrics, tensors: tensorDiffs(a, b) };
  }
  function tensorDiffs(a, b) {
    const t = data.tensors;
    if (!t || t.skipped) return null;
    for (const i of [a, b]) {
      const reason = t.unreadable[rows[i][C.id]];
      if (reason) return "the tensors of " + shortId(i) + " could not be read: " + reason;
    }
    const entries = (i) => new Map((t.nodes[rows[i][C.id]] || []).map(([name, digest]) => [t.names[name], t.digests[digest]]));
    const left = entries(a), right = entries(b), out = [];
    for (const name of [...left.keys()].concat([...right.keys()].filter((n) => !left.has(n)))) {
      const x = left.get(name), y = right.get(name);
      const bx = x && t.blobs[x], by = y && t.blobs[y];
      if (!x || !y) { out.push({ name, status: x ? "only in a" : "only in b", dtype: (bx || by)[0], shape_a: bx ? bx[1] : null, shape_b: by ? by[1] : null }); continue; }
      if (x === y) { out.push({ name, status: "equal", dtype: bx[0], shape_a: bx[1], shape_b: by[1] }); continue; }
      const same = bx[0] === by[0] && JSON.stringify(bx[1]) === JSON.stringify(by[1]);
      const key = [x, y].sort().join("|");
      out.push({ name, status: same ? "changed" : "reshaped", dtype: bx[0], shape_a: bx[1], shape_b: by[1],
        changed: same && key in t.changed ? t.changed[key] : null, zeros_a: bx[2], zeros_b: by[2] });
    }
    return out.filter((d) => d.status !== "equal").concat(out.filter((d) => d.status === "equal"));
  }
  const percent = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%");
  const shape = (s) => (s === null || s === undefined ? "–" : s.join("×") || "scalar");
  function showDiff(a, b) {
    const d = diff(a, b);
    const sections = ["<div class='diff' id='diff'><h3>Diff of A " + esc(shortId(a)) + " and B " + esc(shortId(b)) + "</h3>",
      table([["common ancestor", d.ancestor === null ? "none (different roots)" : link(indexOf.get(d.ancestor))],
        ["A side", esc(d.path_a.join(" → ") || "(the ancestor itself)")],
        ["B side", esc(d.path_b.join(" → ") || "(the ancestor itself)")]])];
    const stepRows = d.steps.filter((s) => s.a !== s.b || s.code_changed || Object.keys(s.properties).length).map((s) =>
      "<tr data-step='" + s.position + "'><td>" + s.position + "</td><td>" + esc(s.a || "–") + "</td><td>" + esc(s.b || "–") + "</td><td>" +
      (s.code_changed ? "<span class='code-changed'>" + esc((s.a || "").split("(")[0]) + "'s code changed between the runs</span>" : "") + "</td></tr>");
    sections.push("<h3>Recipes that differ</h3>" + (stepRows.length ? "<table id='diff-steps'><tr><th>step</th><th>A</th><th>B</th><th></th></tr>" + stepRows.join("") + "</table>" : "<p class='muted'>none</p>"));
    if (Object.keys(d.properties).length)
      sections.push("<h3>State properties</h3>" + table(Object.entries(d.properties).map(([k, [x, y]]) => [k, esc(show(x) + " vs " + show(y))])));
    const onlyA = d.tags_a.filter((t) => !d.tags_b.includes(t)), onlyB = d.tags_b.filter((t) => !d.tags_a.includes(t));
    sections.push("<h3>Tags</h3>" + table([["only in A", esc(onlyA.join(", ") || "–")], ["only in B", esc(onlyB.join(", ") || "–")]]));
    const metricRows = Object.entries(d.metrics).map(([k, [x, y, delta]]) => "<tr data-metric='" + esc(k) + "'><th>" + esc(k) + "</th><td>" + esc(show(x)) +
      "</td><td>" + esc(show(y)) + "</td><td>" + (delta === null ? "" : (delta >= 0 ? "+" : "") + esc(show(delta))) + "</td></tr>");
    sections.push("<h3>Metrics</h3>" + (metricRows.length ? "<table id='diff-metrics'><tr><th></th><th>A</th><th>B</th><th>B − A</th></tr>" + metricRows.join("") + "</table>" : "<p class='muted'>none</p>"));
    if (d.tensors === null || typeof d.tensors === "string")
      sections.push("<h3>Tensors</h3><p class='muted'>" + esc(d.tensors || (data.tensors && data.tensors.skipped) || "not listed in this report") + "</p>");
    else {
      const changed = d.tensors.filter((x) => x.status !== "equal");
      sections.push("<h3>Tensors: " + changed.length + " differ, " + (d.tensors.length - changed.length) + " equal</h3><table id='diff-tensors'><tr><th>name</th><th>dtype</th><th>shape</th><th></th><th>changed</th><th>zeros A → B</th></tr>" +
        d.tensors.map((x) => "<tr data-tensor='" + esc(x.name) + "' data-status='" + esc(x.status) + "'><td>" + esc(x.name) + "</td><td>" + esc(x.dtype) + "</td><td>" +
          esc(JSON.stringify(x.shape_a) === JSON.stringify(x.shape_b) ? shape(x.shape_a) : shape(x.shape_a) + " → " + shape(x.shape_b)) + "</td><td" +
          (x.status === "equal" ? "" : " class='changed'") + ">" + esc(x.status) + "</td><td>" + (x.status === "changed" ? (x.changed === null ? "<span class='muted' title='abgraph diff counts them'>n/a</span>" : percent(x.changed)) : "") +
          "</td><td>" + (x.status === "changed" || x.status === "reshaped" ? percent(x.zeros_a) + " → " + percent(x.zeros_b) : "") + "</td></tr>").join("") + "</table>");
    }
    sections.push("</div>");
    $("panel").innerHTML = sections.join("");
    $("panel").dataset.node = "";
  }

  // -- the table: every column of to_dataframe(), sortable, paged ------------------
  const columns = (function () {
    const props = new Set(), recipeProps = new Set(), metrics = new Set();
    data.properties.forEach((p) => Object.keys(p).forEach((k) => props.add(k)));
    for (const row of rows) {
      for (const k in row[C.recipe_properties]) recipeProps.add(k);
      for (const k in row[C.metrics]) metrics.add(k);
    }
    const list = [["id", shortId], ["recipe", recipeName], ["tags", (i) => tagsOf(i).join(", ")],
      ["status", (i) => data.statuses[rows[i][C.status]]], ["depth", (i) => rows[i][C.depth]],
      ["duration", (i) => rows[i][C.duration]]];
    for (const k of [...props].sort()) list.push([k, (i) => propertiesOf(i)[k]]);
    for (const k of [...recipeProps].sort()) {
      const name = props.has(k) || metrics.has(k) ? "recipe." + k : k;
      list.push([name, (i) => rows[i][C.recipe_properties][k]]);
    }
    for (const k of [...metrics].sort()) list.push([k, (i) => rows[i][C.metrics][k]]);
    return list;
  })();
  const missing = (v) => v === null || v === undefined;
  function compare(x, y) {
    if (typeof x === "number" && typeof y === "number") return x - y;
    if (typeof x === "number") return -1;
    if (typeof y === "number") return 1;
    return String(x) < String(y) ? -1 : String(x) > String(y) ? 1 : 0;
  }
  let order = null;  // row positions in the sorted order (null: as written)
  function sortBy(column) {
    const descending = state.sort && state.sort[0] === column && !state.sort[1];
    state.sort = [column, descending];
    const get = columns[column][1];
    const values = rows.map((_, i) => get(i));
    order = rows.map((_, i) => i).sort((x, y) => (missing(values[x]) - missing(values[y])) ||
      (missing(values[x]) ? 0 : (descending ? -1 : 1) * compare(values[x], values[y])) || x - y);  // missing last
    state.page = 0;
    renderTable();
  }
  function renderTable() {
    const shown = state.matches === null ? (order || rows.map((_, i) => i)) :
      (order ? (() => { const keep = new Set(state.matches); return order.filter((i) => keep.has(i)); })() : state.matches);
    const pages = Math.max(1, Math.ceil(shown.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const page = shown.slice(state.page * PAGE, (state.page + 1) * PAGE);
    const head = columns.map(([name], c) => "<th data-column='" + c + "'" + (state.sort && state.sort[0] === c ? " class='sorted-" + (state.sort[1] ? "desc" : "asc") + "'" : "") + ">" + esc(name) + "</th>");
    document.querySelector("#table thead").innerHTML = "<tr>" + head.join("") + "</tr>";
    document.querySelector("#table tbody").innerHTML = page.map((i) => "<tr data-node='" + i + "'>" +
      columns.map(([, get]) => "<td>" + esc(show(get(i))) + "</td>").join("") + "</tr>").join("");
    $("page-status").textContent = "rows " + (shown.length ? state.page * PAGE + 1 : 0) + "–" + (state.page * PAGE + page.length) + " of " + shown.length.toLocaleString("en") + " · page " + (state.page + 1) + " of " + pages;
    $("prev-page").disabled = state.page === 0;
    $("next-page").disabled = state.page >= pages - 1;
  }
  document.querySelector("#table thead").addEventListener("click", (event) => {
    const th = event.target.closest("th");
    if (th) sortBy(Number(th.dataset.column));
  });
  $("prev-page").onclick = () => { state.page--; renderTable(); };
  $("next-page").onclick = () => { state.page++; renderTable(); };
  let typing = null;
  $("filter").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(applyFilter, N > 20000 ? 200 : 30); });

  renderTable();
  highlight();
  scrollToRoots();
  window.abgraphReadyMs = performance.now();
  window.abgraphReport = { diff: (a, b) => diff(indexOf.get(a), indexOf.get(b)), select: (id) => select(indexOf.get(id)) };
  document.body.dataset.ready = "true";
})();

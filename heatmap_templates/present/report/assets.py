"""The report page's inline style and script (nothing is fetched from elsewhere).

The script fills the table of every image from the rows' JSON (sortable by a click or by the keyboard on its headers'
buttons, filterable, paginated, optional columns chosen in a picker) and runs the enlarged view of the galleries'
thumbnails: a modal dialog that keeps focus inside while open, closes with Esc (focus back to the thumbnail that
opened it), steps through its gallery with buttons or the arrow keys, shows a colour bar and the image without its
map. The strategies' spectral embeddings (:mod:`.embedding`) show a point's thumbnail and numbers in a tooltip on
hover or focus (Tab reaches one point per plot, the arrow keys move between its points) and, on click or Enter, open
the enlarged view of a gallery image or go to the point's row in the table. It ends by marking
``<body data-ready="true">``.
"""
from __future__ import annotations

STYLE = """
:root { --ink: #1b1b1b; --muted: #555; --line: #d0d0d0; --band: #f4f4f2; --accent: #0a4f8a; --flag: #a63d00; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); margin: 0; background: #fff; }
header, footer { max-width: 1180px; margin: 0 auto; padding: 0 16px; }
main { padding: 0 16px; } main > section, main > p.skip { max-width: 1148px; margin-left: auto; margin-right: auto; }
main > section#images { max-width: none; }
header { padding-top: 12px; border-bottom: 1px solid var(--line); }
nav a { margin-right: 14px; color: var(--accent); display: inline-block; }
h1 { font-size: 1.5em; margin: 0.3em 0; overflow-wrap: break-word; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; } .muted { color: var(--muted); } .note { color: var(--muted); font-size: 0.92em; } .ci { color: var(--muted); }
p, li, figcaption, td, th { overflow-wrap: break-word; }
table { border-collapse: collapse; margin: 0.4em 0 0.8em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: var(--band); } td.num { text-align: right; }
.settings th { font-weight: 600; width: 13em; }
figure { margin: 0.6em 0; } figure img.figure { max-width: min(100%, 860px); height: auto; border: 1px solid var(--line); }
.scroll { overflow-x: auto; max-width: 100%; } details > summary { cursor: pointer; font-weight: 600; margin: 0.8em 0; }
figcaption { font-size: 0.88em; color: var(--muted); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
.thumb { margin: 0; font-size: 0.8em; word-break: normal; }
.thumb button { padding: 0; border: 1px solid var(--line); background: none; cursor: zoom-in; display: block; }
.thumb img { display: block; width: 148px; height: 148px; object-fit: contain; background: #000; }
.flag { color: var(--flag); font-weight: 600; } .ok { color: var(--accent); }
.skip a { color: var(--accent); }
#controls { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: end; margin: 0.5em 0; }
#controls label { display: flex; flex-direction: column; font-size: 0.85em; color: var(--muted); }
#controls input, #controls select { max-width: 100%; }
#column-picker { font-size: 0.85em; } #column-picker summary { margin: 0; font-weight: normal; color: var(--muted); }
#column-picker label { flex-direction: row; gap: 4px; align-items: center; color: var(--ink); }
#column-picker div { display: flex; flex-wrap: wrap; gap: 4px 12px; }
#image-table { width: 100%; font-size: 0.86em; }
#image-table th { white-space: nowrap; padding: 0; }
#image-table th > span, #image-table th > button { display: block; padding: 3px 7px; }
#image-table th > button { font: inherit; font-weight: 600; border: 0; background: none; cursor: pointer; width: 100%;
                           text-align: left; color: inherit; }
#image-table th > button:focus-visible { outline: 2px solid var(--accent); outline-offset: -2px; }
#image-table .arrow { color: var(--accent); margin-left: 3px; }
#image-table td.path { word-break: normal; overflow-wrap: break-word; min-width: 9em; max-width: 26em; }
#image-table td.reason { color: var(--muted); font-size: 0.9em; }
#pager { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; }
#lightbox { position: fixed; inset: 0; background: rgba(0, 0, 0, 0.86); display: none; align-items: center;
            justify-content: center; flex-direction: column; z-index: 10; color: #fff; padding: 8px; overflow-y: auto; }
#lightbox.open { display: flex; }
#lightbox img { width: min(76vh, 92vw); height: auto; image-rendering: auto; background: #000; }
#lightbox p { max-width: 90vw; text-align: center; margin: 0.3em 0; overflow-wrap: break-word; }
#lightbox .buttons { display: flex; flex-wrap: wrap; gap: 8px; justify-content: center; }
#lightbox button { font-size: 1em; } #lightbox button[aria-pressed="true"] { font-weight: 700; }
#lightbox .scale { display: flex; gap: 6px; align-items: center; font-size: 0.85em; }
.embedding-figure .plots { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.embedding-figure svg { max-width: 100%; height: auto; } svg.embedding [data-r] { cursor: pointer; }
svg.embedding [data-r]:hover, svg.embedding [data-r]:focus { stroke: #000; stroke-width: 1.6; outline: none; }
#embedding-tip { position: fixed; z-index: 5; background: #fff; border: 1px solid var(--line); padding: 6px; max-width: 260px;
                 font-size: 0.82em; box-shadow: 0 2px 8px rgba(0, 0, 0, 0.25); pointer-events: none; overflow-wrap: break-word; }
#embedding-tip img { display: block; width: 120px; height: 120px; object-fit: contain; background: #000; margin-bottom: 4px; }
#image-table tr.highlight td { background: #fff3c4; } #image-table tr.highlight { outline: 2px solid var(--accent); }
.colourbar { display: inline-block; width: 160px; height: 10px; vertical-align: middle; border: 1px solid var(--line); }
.gallery-scale .scale { display: flex; gap: 6px; align-items: center; font-size: 0.85em; flex-wrap: wrap; }
.gallery-scale p { margin: 0.2em 0; }
dl.glossary { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; } dl.glossary dt { font-weight: 600; }
dl.glossary dd { margin: 0; } .figure-links { font-size: 0.85em; } th[title] { text-decoration: underline dotted; }
@media (max-width: 600px) { dl.glossary { grid-template-columns: 1fr; } dl.glossary dd { margin-left: 1em; } }
@media print {
  nav, .skip, #controls, #lightbox, #embedding-tip, .thumb button { display: none !important; }
  main > section, main > section#images { max-width: none; }
  .scroll { overflow: visible; } table { page-break-inside: auto; } tr, figure { break-inside: avoid; }
  thead { display: table-header-group; } #image-table { font-size: 7.5pt; } #image-table th > button { padding: 1px 3px; }
  #image-table td { padding: 1px 3px; } #image-table td.path { max-width: none; min-width: 0; }
  a { color: inherit; text-decoration: none; }
}
"""

_TABLE_SCRIPT = r"""
  var data = JSON.parse(document.getElementById("rows-data").textContent);
  var columns = data.columns, rows = data.rows, pageSize = data.page_size, digits = data.digits;
  var col = {}; columns.forEach(function (name, i) { col[name] = i; });
  var order = ["thumbnail"].concat(columns.filter(function (name) { return name !== "thumbnail"; }));
  var hidden = {};
  var state = { sort: "index", direction: 1, page: 0, view: rows.slice() };
  var body = document.querySelector("#image-table tbody");
  var status = document.getElementById("table-status");
  var filters = { text: document.getElementById("filter-text"), label: document.getElementById("filter-label"),
                  predicted: document.getElementById("filter-predicted"), atypical: document.getElementById("filter-atypical"),
                  correct: document.getElementById("filter-correct"), strategy: document.getElementById("filter-strategy") };
  function show(value, name) {
    if (value === null || value === undefined) return "";
    if (value === true) return "yes"; if (value === false) return "no";
    if (typeof value === "number" && digits[name] !== undefined) return value.toFixed(digits[name]);
    return String(value);
  }
  function breakable(cell, text) {  // a line may break after / _ - (never inside a word)
    text.replace(/([\/_-])/g, "$1\u0000").split("\u0000").forEach(function (part, i) {
      if (i) cell.appendChild(document.createElement("wbr"));
      cell.appendChild(document.createTextNode(part));
    });
  }
  function matches(row) {
    var text = filters.text.value.trim().toLowerCase();
    if (text && row[col.path].toLowerCase().indexOf(text) < 0) return false;
    if (filters.label.value && row[col.label].split(", ").indexOf(filters.label.value) < 0) return false;
    if (filters.predicted.value && row[col.predicted].split(", ").indexOf(filters.predicted.value) < 0) return false;
    if (filters.atypical.value && show(row[col.atypical]) !== filters.atypical.value) return false;
    if (filters.correct.value && show(row[col.correct]) !== filters.correct.value) return false;
    if (filters.strategy.value && (show(row[col.strategy]) || "none") !== filters.strategy.value) return false;
    return true;
  }
  function compare(a, b) {
    var x = a[col[state.sort]], y = b[col[state.sort]];
    if (x === y) return a[col.index] - b[col.index];
    if (x === null || x === undefined) return 1; if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * state.direction;
  }
  function cell(row, name) {
    var td = document.createElement("td"), value = row[col[name]];
    td.dataset.col = name; td.hidden = !!hidden[name];
    if (name === "thumbnail") {
      if (value && document.querySelector('.gallery button[data-thumb="' + value + '"]')) {
        var b = document.createElement("button"); b.type = "button"; b.textContent = "view"; b.dataset.thumb = value;
        b.setAttribute("aria-label", "enlarge " + row[col.path]); td.appendChild(b);
      } else { td.className = "reason"; td.textContent = "not in a gallery"; td.title = "no thumbnail: the image is not in a gallery"; }
    } else if (name === "path") { td.className = "path"; breakable(td, value); }
    else {
      td.textContent = show(value, name);
      if (typeof value === "number") td.className = "num";
      if ((name === "atypical" && value === true) || (name === "correct" && value === false)) td.className = "flag";
    }
    return td;
  }
  function render() {
    var start = state.page * pageSize, shown = state.view.slice(start, start + pageSize);
    var fragment = document.createDocumentFragment();
    shown.forEach(function (row) {
      var tr = document.createElement("tr");
      order.forEach(function (name) { tr.appendChild(cell(row, name)); });
      fragment.appendChild(tr);
    });
    body.replaceChildren(fragment);
    var pages = Math.max(1, Math.ceil(state.view.length / pageSize));
    status.textContent = state.view.length ? ("rows " + (start + 1) + "\u2013" + (start + shown.length) + " of " + state.view.length +
      (state.view.length < rows.length ? " (filtered from " + rows.length + ")" : "") + ", page " + (state.page + 1) + " of " + pages)
      : "no row matches the filters";
    document.getElementById("page-previous").disabled = state.page === 0;
    document.getElementById("page-next").disabled = state.page >= pages - 1;
    document.querySelectorAll("#image-table th[aria-sort]").forEach(function (th) {
      var sorted = th.dataset.col === state.sort, up = state.direction > 0;
      th.setAttribute("aria-sort", sorted ? (up ? "ascending" : "descending") : "none");
      th.querySelector(".arrow").textContent = sorted ? (up ? "\u25B2" : "\u25BC") : "\u21C5";
    });
  }
  function refilter() { state.view = rows.filter(matches); state.view.sort(compare); state.page = 0; render(); }
  Object.keys(filters).forEach(function (key) { filters[key].addEventListener("input", refilter); });
  document.querySelectorAll("#image-table th[aria-sort] button").forEach(function (button) {
    button.addEventListener("click", function () {  // a button: Tab reaches it, Enter and Space press it
      var name = button.parentNode.dataset.col;
      state.direction = state.sort === name ? -state.direction : 1; state.sort = name; state.view.sort(compare); state.page = 0; render();
    });
  });
  document.querySelectorAll("#column-picker input").forEach(function (box) {
    box.addEventListener("change", function () {
      hidden[box.dataset.col] = !box.checked;
      document.querySelector('#image-table th[data-col="' + box.dataset.col + '"]').hidden = !box.checked;
      render();
    });
  });
  document.getElementById("page-previous").addEventListener("click", function () { state.page -= 1; render(); });
  document.getElementById("page-next").addEventListener("click", function () { state.page += 1; render(); });
  refilter();
"""

_VIEW_SCRIPT = r"""
  var box = document.getElementById("lightbox"), boxImage = box.querySelector("img");
  var caption = document.getElementById("lightbox-caption"), where = document.getElementById("lightbox-position");
  var plainButton = document.getElementById("lightbox-plain"), scale = box.querySelector(".scale");
  var items = [], position = 0, opener = null, plain = false;
  function buttons() { return Array.prototype.slice.call(box.querySelectorAll("button:not([disabled])")); }
  function display() {
    var item = items[position], image = item.querySelector("img");
    var usePlain = plain && item.dataset.plain;
    boxImage.src = usePlain ? item.dataset.plain : (item.dataset.large || image.currentSrc || image.src);
    boxImage.alt = usePlain ? image.alt.replace(/^heatmap of/, "image without its map:") : image.alt;
    caption.textContent = item.dataset.caption || "";
    where.textContent = "image " + (position + 1) + " of " + items.length + " in this gallery";
    plainButton.setAttribute("aria-pressed", usePlain ? "true" : "false"); plainButton.disabled = !item.dataset.plain;
    scale.hidden = !!usePlain;
  }
  function open(thumb, from) {
    var item = document.querySelector('.gallery button[data-thumb="' + thumb + '"]');
    if (!item) return;
    items = Array.prototype.slice.call(item.closest(".gallery").querySelectorAll("button[data-thumb]"));
    position = items.indexOf(item); opener = from; plain = false; display();
    box.classList.add("open"); document.getElementById("lightbox-close").focus();
  }
  function close() {
    box.classList.remove("open");
    if (opener && document.contains(opener)) opener.focus();
    opener = null;
  }
  function step(by) { position = (position + by + items.length) % items.length; display(); }
  function isOpen() { return box.classList.contains("open"); }
  document.getElementById("lightbox-close").addEventListener("click", close);
  document.getElementById("lightbox-previous").addEventListener("click", function () { step(-1); });
  document.getElementById("lightbox-next").addEventListener("click", function () { step(1); });
  plainButton.addEventListener("click", function () { plain = !plain; display(); });
  document.addEventListener("click", function (event) {
    var target = event.target.closest("button[data-thumb]");  // the button, also when the click lands on its image
    if (target && !box.contains(target)) { open(target.dataset.thumb, target); return; }
    if (isOpen() && event.target === box) close();
  });
  document.addEventListener("keydown", function (event) {
    if (!isOpen()) return;
    if (event.key === "Escape") { event.preventDefault(); close(); }
    else if (event.key === "ArrowLeft") { event.preventDefault(); step(-1); }
    else if (event.key === "ArrowRight") { event.preventDefault(); step(1); }
    else if (event.key === "Tab") {  // focus stays in the dialog
      var inside = buttons(), first = inside[0], last = inside[inside.length - 1], now = document.activeElement;
      if (!box.contains(now)) { event.preventDefault(); first.focus(); }
      else if (event.shiftKey && now === first) { event.preventDefault(); last.focus(); }
      else if (!event.shiftKey && now === last) { event.preventDefault(); first.focus(); }
    }
  });
  document.addEventListener("focusin", function (event) {
    if (isOpen() && !box.contains(event.target)) buttons()[0].focus();
  });
"""

_EMBEDDING_SCRIPT = r"""
  var tip = document.createElement("div"); tip.id = "embedding-tip"; tip.setAttribute("role", "tooltip"); tip.hidden = true;
  document.body.appendChild(tip);
  function galleryButton(point) {  // the thumbnail of the plot's class's map, else any thumbnail of the row
    var r = point.dataset.r, k = point.ownerSVGElement.dataset.k, row = rows[r];
    var own = document.querySelector('.gallery button[data-thumb="' + r + "-" + k + '"]');
    var other = row && row[col.thumbnail] && document.querySelector('.gallery button[data-thumb="' + row[col.thumbnail] + '"]');
    return own || other || null;
  }
  function line(text) { var div = document.createElement("div"); div.textContent = text; tip.appendChild(div); }
  function showTip(point) {
    var row = rows[point.dataset.r], button = galleryButton(point);
    if (!row) return;
    tip.replaceChildren();
    if (button) {
      var picture = document.createElement("img"), small = button.querySelector("img");
      picture.src = small.currentSrc || small.src; picture.alt = ""; tip.appendChild(picture);
    }
    line(row[col.path].split("/").pop());
    line("label " + (row[col.label] || "unknown") + " \u2192 predicted " + row[col.predicted] + " (p " + show(row[col.probability], "probability") + ")");
    line("similarity to the template " + (show(row[col.similarity], "similarity") || "\u2013"));
    if (row[col.strategy] !== null) line("strategy " + row[col.strategy] + ", strategy similarity " +
                                         (show(row[col.strategy_similarity], "strategy_similarity") || "\u2013"));
    line(button ? "click or Enter: enlarge" : "click or Enter: its row in the table");
    tip.hidden = false;
    var box = point.getBoundingClientRect(), left = box.right + 10, top = box.top - 10;
    if (left + tip.offsetWidth > window.innerWidth - 4) left = Math.max(4, box.left - 10 - tip.offsetWidth);
    top = Math.max(4, Math.min(top, window.innerHeight - tip.offsetHeight - 4));
    tip.style.left = left + "px"; tip.style.top = top + "px";
    point.setAttribute("aria-describedby", "embedding-tip");
  }
  function hideTip() { tip.hidden = true; }
  var mouseAt = null, keyedAt = null;  // where the mouse was, and where it was when a key last moved the focus
  document.addEventListener("mousemove", function (event) { mouseAt = [event.pageX, event.pageY]; }, true);
  function moved(event) {
    if (keyedAt && event.pageX === keyedAt[0] && event.pageY === keyedAt[1]) return false;
    keyedAt = null; return true;
  }
  function goToRow(index) {  // clear the filters when they hide the row, then its page, the row marked and focused
    var at = function () { return state.view.findIndex(function (row) { return row[col.index] === index; }); };
    if (at() < 0) { Object.keys(filters).forEach(function (key) { filters[key].value = ""; }); refilter(); }
    state.page = Math.floor(at() / pageSize); render();
    var tr = Array.prototype.find.call(body.rows, function (r) { return r.querySelector('td[data-col="index"]').textContent === String(index); });
    if (!tr) return;
    tr.dataset.row = index; tr.classList.add("highlight"); tr.tabIndex = -1; tr.scrollIntoView({ block: "center" }); tr.focus();
  }
  function activate(point) {
    var button = galleryButton(point);
    hideTip();
    if (button) open(button.dataset.thumb, point); else goToRow(Number(point.dataset.r));
  }
  document.querySelectorAll("svg.embedding").forEach(function (svg) {
    var points = Array.prototype.slice.call(svg.querySelectorAll("[data-r]"));
    points.forEach(function (point, i) { point.setAttribute("tabindex", i ? "-1" : "0"); point.setAttribute("role", "button");
                                         point.setAttribute("aria-label", "member, row " + point.dataset.r); });
    function move(point, by) {
      var next = points[(points.indexOf(point) + by + points.length) % points.length];
      point.setAttribute("tabindex", "-1"); next.setAttribute("tabindex", "0"); next.focus();
    }
    // the keyboard wins until the mouse really moves: a view closing or a layout change makes the browser send
    // mouseover/mouseout (without movement) for the point under a resting mouse, which must not replace the tooltip
    // of the point the arrow keys reached
    svg.addEventListener("mouseover", function (event) { var p = event.target.closest("[data-r]"); if (p && moved(event)) showTip(p); });
    svg.addEventListener("mouseout", function (event) { if (event.target.closest("[data-r]") && moved(event)) hideTip(); });
    svg.addEventListener("focusin", function (event) { var p = event.target.closest("[data-r]"); if (p) showTip(p); });
    svg.addEventListener("focusout", hideTip);
    svg.addEventListener("click", function (event) { var p = event.target.closest("[data-r]"); if (p) activate(p); });
    svg.addEventListener("keydown", function (event) {
      var p = event.target.closest("[data-r]");
      if (!p) return;
      keyedAt = mouseAt;
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); activate(p); }
      else if (event.key === "ArrowRight" || event.key === "ArrowDown") { event.preventDefault(); move(p, 1); }
      else if (event.key === "ArrowLeft" || event.key === "ArrowUp") { event.preventDefault(); move(p, -1); }
      else if (event.key === "Escape") hideTip();
    });
  });
"""

SCRIPT = "\n(function () {\n  \"use strict\";" + _TABLE_SCRIPT + _VIEW_SCRIPT + _EMBEDDING_SCRIPT + "  document.body.dataset.ready = \"true\";\n})();\n"

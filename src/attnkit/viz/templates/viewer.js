// attnkit attention viewer: vanilla JS, canvas drawing, no network.
// Data: JSON header + one deflated binary blob (see attnkit/viz/_html.py for the encoding).
"use strict";
(async function main() {
  const D = JSON.parse(document.getElementById("attnkit-data").textContent);
  const { N, H, l, s, k } = D;
  const $ = (id) => document.getElementById(id);
  const status = $("status");

  // ---- decode ---------------------------------------------------------------------------
  async function inflate(b64) {
    const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  const TYPES = { uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array, float32: Float32Array };
  const bin = await inflate(D.blob);
  const arr = (name) => {
    const [off, dtype, len] = D.toc[name];
    return new TYPES[dtype](bin.buffer, bin.byteOffset + off, len);
  };
  function float16(bits) { // IEEE half -> float32 via a 64K lookup table
    const table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, f = h & 1023;
      table[h] = e === 0 ? sign * f * 2 ** -24 : e === 31 ? (f ? NaN : sign * Infinity) : sign * (1 + f / 1024) * 2 ** (e - 15);
    }
    const out = new Float32Array(bits.length);
    for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]];
    return out;
  }
  const IDX = arr("idx"), VAL = float16(arr("val")), THUMB = arr("thumb");
  const ROLL = D.toc.rollout ? arr("rollout") : null; // 8-bit, each row scaled to its max
  const ROLL_MAX = D.toc.rollout_rowmax ? arr("rollout_rowmax") : null;
  const at = (layer, h, i) => ((layer * H + h) * l + i) * k; // offset of row i's top-k in IDX/VAL

  // ---- state ----------------------------------------------------------------------------
  const S = { view: "head", layer: D.layer, heads: new Set(D.heads), edges: Math.min(k, l <= 64 ? 4 : 2),
              minw: 0.02, focus: D.focus === null ? null : { side: "q", i: D.focus }, pinned: D.focus !== null };
  const color = (h, a = 1) => `hsla(${Math.round((h * 360) / H)}, 75%, 42%, ${a})`;
  const fmt = (w) => w.toFixed(2);
  const seen = {};
  D.keys.forEach((t) => { seen[t] = (seen[t] || 0) + 1; });
  const keyName = (j) => (seen[D.keys[j]] > 1 ? `${D.keys[j]}·${j}` : D.keys[j]); // position when repeated
  const pct = (x) => (100 * x).toFixed(1) + "%";

  $("pruning").textContent =
    `Head view: each query's top ${k} of ${s} keys per head (pruned: the hidden keys hold ${pct(D.hidden_mean)} of a row's weight on average, ` +
    `${pct(D.hidden_max)} at most); weights stored as float16. Thumbnails: max-pooled to ${D.thumb[0]}×${D.thumb[1]}, 8-bit. ` +
    `Rollout: 8-bit per row. ${N} layers × ${H} heads, ${l} tokens. Layers and heads count from 0.`;

  // ---- head view ------------------------------------------------------------------------
  const ROW = Math.max(6, Math.min(18, Math.floor(30000 / Math.max(l, s))));
  document.documentElement.style.setProperty("--row", ROW + "px");
  const layerSel = $("layer");
  for (let n = 0; n < N; n++) layerSel.add(new Option(`${n}`, `${n}`));
  layerSel.value = `${S.layer}`;
  const headsBox = $("heads");
  for (let h = 0; h < H; h++) {
    const lab = document.createElement("label");
    lab.style.background = color(h);
    lab.innerHTML = `<input type="checkbox" data-head="${h}"${S.heads.has(h) ? " checked" : ""}>${h}`;
    headsBox.appendChild(lab);
  }
  const edges = $("edges"), minw = $("minw");
  edges.max = `${k}`; edges.value = `${S.edges}`; minw.value = `${Math.round(S.minw * 100)}`;

  function tokenColumn(el, labels, side) {
    const frag = document.createDocumentFragment();
    labels.forEach((t, i) => {
      const div = document.createElement("div");
      div.textContent = t;
      div.dataset[side === "q" ? "i" : "j"] = `${i}`;
      div.className = (side === "q" ? "qtok" : "ktok") + ((side === "k" || D.self_attention) && D.special[i] ? " special" : "");
      frag.appendChild(div);
    });
    el.appendChild(frag);
    return [...el.children];
  }
  const qDivs = tokenColumn($("qcol"), D.tokens, "q");
  const kDivs = tokenColumn($("kcol"), D.keys, "k");
  // The canvas covers only the visible part of the token columns (it is sticky inside the
  // scrolling box) and is redrawn on scroll: long inputs cost what is on screen, not all of it.
  const canvas = $("head-canvas"), lanes = $("lanes"), scroller = $("head-scroll");
  const ctx = canvas.getContext("2d");
  const W = 260, HT = Math.max(l, s) * ROW;
  lanes.style.height = HT + "px";
  let VH = 0, dpr = 1;
  function sizeCanvas() {
    VH = Math.max(1, Math.min(HT, scroller.clientHeight || HT));
    dpr = window.devicePixelRatio || 1;
    canvas.style.width = W + "px"; canvas.style.height = VH + "px";
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(VH * dpr);
  }
  sizeCanvas();
  const BUCKETS = 8; // edges grouped by weight so each (head, opacity) is one stroke
  function drawHead() {
    const t0 = performance.now();
    const top = canvas.getBoundingClientRect().top - lanes.getBoundingClientRect().top, bottom = top + VH;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, VH);
    ctx.translate(0, -top);
    const f = S.focus, heads = [...S.heads];
    const rows = f && f.side === "q" ? [f.i] : [...Array(l).keys()];
    const cap = f ? k : S.edges;
    let drawn = 0;
    const keyMax = new Float32Array(s);
    for (const h of heads) {
      const paths = Array.from({ length: BUCKETS }, () => new Path2D());
      for (const i of rows) {
        const base = at(S.layer, h, i), y0 = i * ROW + ROW / 2;
        for (let r = 0; r < cap; r++) {
          const w = VAL[base + r];
          if (w < S.minw) break; // rows are sorted by weight
          const j = IDX[base + r], y1 = j * ROW + ROW / 2;
          if (f && f.side === "k" && j !== f.j) continue;
          if (w > keyMax[j]) keyMax[j] = w;
          if (Math.max(y0, y1) < top || Math.min(y0, y1) > bottom) continue; // off screen
          const p = paths[Math.min(BUCKETS - 1, Math.floor(w * BUCKETS))];
          p.moveTo(0, y0); p.lineTo(W, y1);
          drawn++;
        }
      }
      ctx.lineWidth = f ? 2.2 : 1.2;
      paths.forEach((p, b) => { ctx.strokeStyle = color(h, 0.05 + (0.95 * (b + 0.5)) / BUCKETS); ctx.stroke(p); }); // opacity ~ weight
    }
    canvas.dataset.edges = `${drawn}`;
    // highlight what the focused token connects to
    qDivs.forEach((d, i) => { d.classList.toggle("focus", !!f && f.side === "q" && f.i === i); d.style.background = ""; });
    kDivs.forEach((d, j) => {
      d.classList.toggle("focus", !!f && f.side === "k" && f.j === j);
      d.style.background = f && f.side === "q" && keyMax[j] > 0 ? `rgba(29, 39, 51, ${0.08 + 0.5 * keyMax[j]})` : "";
      d.title = f && f.side === "q" && keyMax[j] > 0 ? `max weight ${fmt(keyMax[j])}` : "";
    });
    $("focus-info").textContent = focusText();
    document.body.dataset.focus = f ? `${f.side}${f.side === "q" ? f.i : f.j}` : "";
    status.textContent = `layer ${S.layer}, ${heads.length} head(s), ${drawn} edges drawn in ${(performance.now() - t0).toFixed(0)} ms`;
  }
  function focusText() {
    const f = S.focus;
    if (!f || f.side !== "q") return f ? `key "${D.keys[f.j]}": lines from the queries that rank it in their top ${k}` : "";
    const lines = [...S.heads].map((h) => {
      const base = at(S.layer, h, f.i), parts = [];
      for (let r = 0; r < Math.min(k, 5); r++) parts.push(`${keyName(IDX[base + r])} ${fmt(VAL[base + r])}`);
      return `layer ${S.layer} head ${h}: ${parts.join(", ")}`;
    });
    return `"${D.tokens[f.i]}" (token ${f.i}) attends to:\n` + lines.join("\n");
  }

  let pending = false;
  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; render(); });
  }
  function setFocus(next, pin) {
    if (pin) {
      const same = S.pinned && S.focus && next && S.focus.side === next.side && S.focus.i === next.i && S.focus.j === next.j;
      S.pinned = !same; S.focus = same ? null : next;
    } else if (!S.pinned) S.focus = next;
    redraw();
  }
  const tokenOf = (e) => {
    const d = e.target.closest(".qtok, .ktok");
    if (!d) return null;
    return d.classList.contains("qtok") ? { side: "q", i: +d.dataset.i } : { side: "k", j: +d.dataset.j };
  };
  for (const col of [$("qcol"), $("kcol")]) {
    col.addEventListener("mouseover", (e) => { const t = tokenOf(e); if (t) setFocus(t, false); });
    col.addEventListener("mouseleave", () => setFocus(null, false));
    col.addEventListener("click", (e) => { const t = tokenOf(e); if (t) setFocus(t, true); });
  }
  scroller.addEventListener("scroll", redraw, { passive: true });
  window.addEventListener("resize", () => { sizeCanvas(); redraw(); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") { S.pinned = false; S.focus = null; redraw(); } });
  layerSel.addEventListener("change", () => { S.layer = +layerSel.value; redraw(); });
  headsBox.addEventListener("change", (e) => {
    const h = +e.target.dataset.head;
    if (e.target.checked) S.heads.add(h); else S.heads.delete(h);
    redraw();
  });
  const setHeads = (list) => {
    S.heads = new Set(list);
    headsBox.querySelectorAll("input").forEach((c) => { c.checked = S.heads.has(+c.dataset.head); });
    redraw();
  };
  $("heads-all").addEventListener("click", () => setHeads([...Array(H).keys()]));
  $("heads-none").addEventListener("click", () => setHeads([]));
  const syncOutputs = () => { $("edges-out").textContent = edges.value; $("minw-out").textContent = fmt(S.minw); };
  edges.addEventListener("input", () => { S.edges = +edges.value; syncOutputs(); redraw(); });
  minw.addEventListener("input", () => { S.minw = +minw.value / 100; syncOutputs(); redraw(); });
  syncOutputs();

  // ---- model view -----------------------------------------------------------------------
  const [TQ, TK] = D.thumb;
  function blues(v) { // v in [0, 1] -> white..dark blue; sqrt so weak structure stays visible
    const t = Math.sqrt(v);
    return [255 - 225 * t, 255 - 190 * t, 255 - 105 * t];
  }
  let modelBuilt = false;
  function buildModel() {
    modelBuilt = true;
    const grid = $("model-grid");
    grid.style.gridTemplateColumns = `max-content repeat(${H}, 66px)`;
    grid.appendChild(document.createElement("span"));
    for (let h = 0; h < H; h++) { const sp = document.createElement("span"); sp.textContent = `head ${h}`; grid.appendChild(sp); }
    for (let n = 0; n < N; n++) {
      const sp = document.createElement("span"); sp.textContent = `layer ${n}`; grid.appendChild(sp);
      for (let h = 0; h < H; h++) {
        const c = document.createElement("canvas");
        c.width = TK; c.height = TQ; c.title = `layer ${n} head ${h}`; c.dataset.layer = `${n}`; c.dataset.head = `${h}`;
        const g = c.getContext("2d"), img = g.createImageData(TK, TQ), off = (n * H + h) * TQ * TK;
        for (let p = 0; p < TQ * TK; p++) {
          const [r, gg, b] = blues(THUMB[off + p] / 255);
          img.data[4 * p] = r; img.data[4 * p + 1] = gg; img.data[4 * p + 2] = b; img.data[4 * p + 3] = 255;
        }
        g.putImageData(img, 0, 0);
        c.addEventListener("click", () => { S.layer = n; layerSel.value = `${n}`; setHeads([h]); show("head"); });
        grid.appendChild(c);
      }
    }
  }

  // ---- rollout view ---------------------------------------------------------------------
  const rc = $("rollout-canvas");
  let rolloutBuilt = false;
  const RPX = Math.max(1, Math.floor(560 / Math.max(l, s)));
  function buildRollout() {
    rolloutBuilt = true;
    if (!ROLL) { $("rollout-info").textContent = "Rollout needs self-attention (these maps are cross-attention)."; return; }
    rc.width = s; rc.height = l;
    rc.style.width = s * RPX + "px"; rc.style.height = l * RPX + "px";
    const g = rc.getContext("2d"), img = g.createImageData(s, l);
    for (let p = 0; p < l * s; p++) {
      const t = Math.sqrt(ROLL[p] / 255);
      img.data[4 * p] = 255 - 150 * t; img.data[4 * p + 1] = 255 - 200 * t; img.data[4 * p + 2] = 255 - 90 * t; img.data[4 * p + 3] = 255;
    }
    g.putImageData(img, 0, 0);
    rc.addEventListener("mousemove", (e) => {
      const i = Math.min(l - 1, Math.floor(e.offsetY / RPX)), j = Math.min(s - 1, Math.floor(e.offsetX / RPX));
      status.textContent = `rollout "${D.tokens[i]}" (${i}) <- "${D.keys[j]}" (${j}): ${fmt((ROLL[i * s + j] / 255) * ROLL_MAX[i])}`;
    });
    rc.addEventListener("click", (e) => setFocus({ side: "q", i: Math.min(l - 1, Math.floor(e.offsetY / RPX)) }, true));
  }
  function drawRolloutInfo() {
    if (!ROLL) return;
    const f = S.focus;
    if (!f || f.side !== "q") { $("rollout-info").textContent = "Click a row (or focus a token in the head view)."; return; }
    const row = [...Array(s).keys()].map((j) => [j, (ROLL[f.i * s + j] / 255) * ROLL_MAX[f.i]]).sort((a, b) => b[1] - a[1]);
    $("rollout-info").textContent = `"${D.tokens[f.i]}" (token ${f.i}) after ${N} layers is made of:\n` +
      row.slice(0, 12).map(([j, w]) => `${keyName(j).padEnd(14)} ${fmt(w)}`).join("\n");
  }

  // ---- views ----------------------------------------------------------------------------
  function show(view) {
    S.view = view;
    document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.view === view));
    for (const v of ["head", "model", "rollout"]) $(`${v}-view`).hidden = v !== view;
    redraw();
  }
  $("tabs").addEventListener("click", (e) => { if (e.target.dataset.view) show(e.target.dataset.view); });
  function render() {
    if (S.view === "head") drawHead();
    else if (S.view === "model" && !modelBuilt) buildModel();
    else if (S.view === "rollout") { if (!rolloutBuilt) buildRollout(); drawRolloutInfo(); }
    document.body.dataset.view = S.view;
  }

  if (S.focus) scroller.scrollTop = Math.max(0, S.focus.i * ROW - VH / 2);
  render();
  document.body.dataset.drawnMs = performance.now().toFixed(0);
  // ready once the first frame with the drawing has been painted (two frames later)
  requestAnimationFrame(() => requestAnimationFrame(() => {
    document.body.dataset.renderMs = performance.now().toFixed(0);
    document.body.dataset.ready = "1";
  }));
})().catch((err) => {
  document.body.dataset.error = String(err);
  console.error("attnkit viewer:", err);
  document.getElementById("status").textContent = `viewer error: ${err}`;
});

// attnkit attention viewer: vanilla JS, canvas drawing, no network.
// Data: strict JSON header + one deflated binary blob per sequence (see attnkit/viz/_html.py).
// The page may hold a batch: mount() builds the viewer for one sequence from <template>, and a
// switch tears it down (every listener is registered with one AbortController) and mounts another.
"use strict";
(async function main() {
  const D = JSON.parse(document.getElementById("attnkit-data").textContent);
  const num = (x) => (typeof x === "string" ? Number(x) : x); // "NaN"/"Infinity" travel as strings
  const { N, H } = D;
  const $ = (id) => document.getElementById(id);
  const status = $("status");

  // ---- decode ---------------------------------------------------------------------------
  async function inflate(b64) {
    const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  const TYPES = { uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array, float32: Float32Array };
  const HALF = new Float32Array(65536); // IEEE half -> float32 lookup table
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, f = h & 1023;
    HALF[h] = e === 0 ? sign * f * 2 ** -24 : e === 31 ? (f ? NaN : sign * Infinity) : sign * (1 + f / 1024) * 2 ** (e - 15);
  }
  const color = (h, a = 1) => `hsla(${Math.round((h * 360) / H)}, 75%, 42%, ${a})`;
  const fmt = (w) => (Number.isFinite(w) ? w.toFixed(2) : String(w)); // NaN / Infinity shown as such
  const pct = (x) => (Number.isFinite(x) ? (100 * x).toFixed(1) + "%" : String(x));

  // ---- state shared across sequences ------------------------------------------------------
  const S = { view: D.start.view, layer: D.start.layer, heads: new Set(D.start.heads), minw: 0.02, edges: null };
  let current = null;
  $("tabs").addEventListener("click", (e) => { const v = e.target.dataset && e.target.dataset.view; if (v && current) current.show(v); });
  const pick = $("sequence");
  if (D.sequences.length > 1) {
    $("sequence-pick").hidden = false;
    D.sequences.forEach((q, i) => pick.add(new Option(q.name, `${i}`)));
  }
  pick.value = `${D.start.sequence}`;
  pick.addEventListener("change", () => mount(+pick.value, null).catch(fail));

  async function mount(index, focus0) {
    if (current) current.dispose();
    const Q = D.sequences[index];
    const { l, s, kmax } = Q;
    const bin = await inflate(Q.blob);
    const arr = (name) => { const [off, dtype, len] = Q.toc[name]; return new TYPES[dtype](bin.buffer, bin.byteOffset + off, len); };
    const CNT = arr("cnt"), IDX = arr("idx"), BAD = arr("bad"), THUMB = arr("thumb");
    const OFF = new Uint32Array(CNT.length + 1); // row r's keys are IDX[OFF[r] .. OFF[r + 1])
    for (let r = 0; r < CNT.length; r++) OFF[r + 1] = OFF[r] + CNT[r];
    const VAL = Float32Array.from(arr("val"), (b) => HALF[b]);
    const ROLL = Q.toc.rollout ? arr("rollout") : null; // 8-bit, each row scaled to its max
    const ROLL_MAX = Q.toc.rollout_rowmax ? arr("rollout_rowmax") : null;
    const row = (layer, h, i) => (layer * H + h) * l + i; // row index into OFF and BAD
    const root = $("viewer-root");
    root.replaceChildren($("viewer-template").content.cloneNode(true));
    const ac = new AbortController();
    const on = (el, ev, fn, opts = {}) => el.addEventListener(ev, fn, { ...opts, signal: ac.signal });
    const F = { focus: focus0 === null ? null : { side: "q", i: focus0 }, pinned: focus0 !== null };
    S.edges = Math.min(kmax, S.edges || (l <= 64 ? 4 : 2));

    const seen = {};
    Q.keys.forEach((t) => { seen[t] = (seen[t] || 0) + 1; });
    const keyName = (j) => (seen[Q.keys[j]] > 1 ? `${Q.keys[j]}·${j}` : Q.keys[j]); // position when repeated
    const hiddenOf = (r) => { let w = 0; for (let p = OFF[r]; p < OFF[r + 1]; p++) if (Number.isFinite(VAL[p])) w += VAL[p]; return Math.max(0, 1 - w); };
    const cut = D.keep_mass !== null
      ? `the fewest keys holding ${pct(D.keep_mass)} of each query's weight` + (D.top_k !== null ? `, at most ${D.top_k}` : "")
      : D.top_k !== null ? `each query's top ${Math.min(D.top_k, s)} of ${s} keys` : `all ${s} keys of each query`;
    $("pruning").textContent =
      `Head view: ${cut} per head (hidden: ${pct(num(Q.hidden_mean))} of a row's weight on average, ${pct(num(Q.hidden_max))} at most); ` +
      `weights stored as float16. Thumbnails: max-pooled to ${Q.thumb[0]}×${Q.thumb[1]}, 8-bit. Rollout: 8-bit per row. ` +
      `${N} layers × ${H} heads, ${l} tokens. Layers and heads count from 0.`;
    $("nonfinite").hidden = Q.bad_rows === 0;
    $("nonfinite").textContent = Q.bad_rows ? `${Q.bad_rows} (layer, head, query) rows hold NaN or infinite weights: their tokens are red and ` +
      `their weights are shown as NaN / Infinity; they are left out of the hidden-weight figures.` : "";

    // ---- head view ----------------------------------------------------------------------
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
    edges.max = `${kmax}`; edges.value = `${S.edges}`; minw.value = `${Math.round(S.minw * 100)}`;

    function tokenColumn(el, labels, side) {
      const frag = document.createDocumentFragment();
      labels.forEach((t, i) => {
        const div = document.createElement("div");
        div.textContent = t;
        div.dataset[side === "q" ? "i" : "j"] = `${i}`;
        div.className = (side === "q" ? "qtok" : "ktok") + ((side === "k" || D.self_attention) && Q.special[i] ? " special" : "");
        frag.appendChild(div);
      });
      el.appendChild(frag);
      return [...el.children];
    }
    const qDivs = tokenColumn($("qcol"), Q.tokens, "q");
    const kDivs = tokenColumn($("kcol"), Q.keys, "k");
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
    const BUCKETS = 8; // edges grouped by weight so each (head, opacity) is one stroke
    function drawHead() {
      const t0 = performance.now();
      if (!VH) sizeCanvas();
      const top = canvas.getBoundingClientRect().top - lanes.getBoundingClientRect().top, bottom = top + VH;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, W, VH);
      ctx.translate(0, -top);
      const f = F.focus, heads = [...S.heads];
      const rows = f && f.side === "q" ? [f.i] : [...Array(l).keys()];
      const cap = f ? kmax : S.edges;
      let drawn = 0;
      const keyMax = new Float32Array(s);
      for (const h of heads) {
        const paths = Array.from({ length: BUCKETS }, () => new Path2D());
        for (const i of rows) {
          const r0 = row(S.layer, h, i), end = Math.min(OFF[r0 + 1], OFF[r0] + cap), y0 = i * ROW + ROW / 2;
          for (let p = OFF[r0]; p < end; p++) {
            const w = VAL[p];
            if (!(w >= S.minw)) break; // rows are sorted by weight (NaN last)
            const j = IDX[p], y1 = j * ROW + ROW / 2;
            if (f && f.side === "k" && j !== f.j) continue;
            if (w > keyMax[j]) keyMax[j] = Math.min(w, 1);
            if (Math.max(y0, y1) < top || Math.min(y0, y1) > bottom) continue; // off screen
            const path = paths[Math.min(BUCKETS - 1, Math.floor(Math.min(w, 1) * BUCKETS))];
            path.moveTo(0, y0); path.lineTo(W, y1);
            drawn++;
          }
        }
        ctx.lineWidth = f ? 2.2 : 1.2;
        paths.forEach((p, b) => { ctx.strokeStyle = color(h, 0.05 + (0.95 * (b + 0.5)) / BUCKETS); ctx.stroke(p); }); // opacity ~ weight
      }
      canvas.dataset.edges = `${drawn}`;
      // highlight what the focused token connects to; red = a row with NaN/inf in a shown head
      qDivs.forEach((d, i) => {
        d.classList.toggle("focus", !!f && f.side === "q" && f.i === i);
        d.classList.toggle("bad", heads.some((h) => BAD[row(S.layer, h, i)]));
        d.style.background = "";
      });
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
      const f = F.focus;
      if (!f || f.side !== "q") return f ? `key "${Q.keys[f.j]}": lines from the queries that keep it` : "";
      const lines = [...S.heads].map((h) => {
        const r0 = row(S.layer, h, f.i), parts = [];
        for (let p = OFF[r0]; p < Math.min(OFF[r0 + 1], OFF[r0] + 5); p++) parts.push(`${keyName(IDX[p])} ${fmt(VAL[p])}`);
        const tail = BAD[r0] ? " (row holds NaN/inf)" : ` (hidden ${pct(hiddenOf(r0))})`;
        return `layer ${S.layer} head ${h}: ${parts.join(", ")}${tail}`;
      });
      return `"${Q.tokens[f.i]}" (token ${f.i}) attends to:\n` + lines.join("\n");
    }

    let pending = false;
    function redraw() {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; if (!ac.signal.aborted) render(); });
    }
    function setFocus(next, pin) {
      if (pin) {
        const same = F.pinned && F.focus && next && F.focus.side === next.side && F.focus.i === next.i && F.focus.j === next.j;
        F.pinned = !same; F.focus = same ? null : next;
      } else if (!F.pinned) F.focus = next;
      redraw();
    }
    const tokenOf = (e) => {
      const d = e.target.closest(".qtok, .ktok");
      if (!d) return null;
      return d.classList.contains("qtok") ? { side: "q", i: +d.dataset.i } : { side: "k", j: +d.dataset.j };
    };
    for (const col of [$("qcol"), $("kcol")]) {
      on(col, "mouseover", (e) => { const t = tokenOf(e); if (t) setFocus(t, false); });
      on(col, "mouseleave", () => setFocus(null, false));
      on(col, "click", (e) => { const t = tokenOf(e); if (t) setFocus(t, true); });
    }
    on(scroller, "scroll", redraw, { passive: true });
    on(window, "resize", () => { sizeCanvas(); redraw(); });
    on(document, "keydown", (e) => { if (e.key === "Escape") { F.pinned = false; F.focus = null; redraw(); } });
    on(layerSel, "change", () => { S.layer = +layerSel.value; redraw(); });
    on(headsBox, "change", (e) => {
      const h = +e.target.dataset.head;
      if (e.target.checked) S.heads.add(h); else S.heads.delete(h);
      redraw();
    });
    const setHeads = (list) => {
      S.heads = new Set(list);
      headsBox.querySelectorAll("input").forEach((c) => { c.checked = S.heads.has(+c.dataset.head); });
      redraw();
    };
    on($("heads-all"), "click", () => setHeads([...Array(H).keys()]));
    on($("heads-none"), "click", () => setHeads([]));
    const syncOutputs = () => { $("edges-out").textContent = edges.value; $("minw-out").textContent = fmt(S.minw); };
    on(edges, "input", () => { S.edges = +edges.value; syncOutputs(); redraw(); });
    on(minw, "input", () => { S.minw = +minw.value / 100; syncOutputs(); redraw(); });
    syncOutputs();

    // ---- model view ---------------------------------------------------------------------
    const [TQ, TK] = Q.thumb;
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
          on(c, "click", () => { S.layer = n; layerSel.value = `${n}`; setHeads([h]); show("head"); });
          grid.appendChild(c);
        }
      }
    }

    // ---- rollout view: labelled rows and columns, cells of at least `zoom` px, scrolling ------
    const rc = $("rollout-canvas"), rTop = $("rollout-top"), rLeft = $("rollout-left"), rScroll = $("rollout-scroll");
    const zoom = $("rollout-zoom");
    let rolloutBuilt = false, heat = null, Z = 14, LW = 0, LH = 0;
    const labelFont = () => `${Math.max(7, Math.min(12, Z - 3))}px system-ui, "DejaVu Sans", "Noto Sans CJK JP", sans-serif`;
    function buildRollout() {
      rolloutBuilt = true;
      if (!ROLL) { $("rollout-info").textContent = "Rollout needs self-attention (these maps are cross-attention)."; return; }
      heat = document.createElement("canvas"); // one pixel per cell, scaled up without smoothing
      heat.width = s; heat.height = l;
      const g = heat.getContext("2d"), img = g.createImageData(s, l);
      for (let p = 0; p < l * s; p++) {
        const t = Math.sqrt(ROLL[p] / 255);
        img.data[4 * p] = 255 - 150 * t; img.data[4 * p + 1] = 255 - 200 * t; img.data[4 * p + 2] = 255 - 90 * t; img.data[4 * p + 3] = 255;
      }
      g.putImageData(img, 0, 0);
      const maxZ = Math.max(4, Math.floor(15000 / ((window.devicePixelRatio || 1) * Math.max(l, s)))); // canvas size limit
      zoom.max = `${Math.min(32, maxZ)}`;
      zoom.value = `${Math.min(maxZ, Math.max(14, Math.min(32, Math.floor(600 / Math.max(l, s)))))}`;
      on(zoom, "input", () => { layoutRollout(); drawRollout(); });
      const cell = (e) => [Math.min(l - 1, Math.floor(e.offsetY / Z)), Math.min(s - 1, Math.floor(e.offsetX / Z))];
      on(rc, "mousemove", (e) => {
        const [i, j] = cell(e);
        status.textContent = `rollout "${Q.tokens[i]}" (${i}) <- "${Q.keys[j]}" (${j}): ${fmt((ROLL[i * s + j] / 255) * ROLL_MAX[i])}`;
      });
      on(rc, "click", (e) => setFocus({ side: "q", i: cell(e)[0] }, true));
      on(rLeft, "click", (e) => setFocus({ side: "q", i: Math.min(l - 1, Math.floor(e.offsetY / Z)) }, true));
      layoutRollout();
    }
    function sized(c, w, h) {
      const r = window.devicePixelRatio || 1;
      c.style.width = w + "px"; c.style.height = h + "px"; c.width = Math.round(w * r); c.height = Math.round(h * r);
      const g = c.getContext("2d");
      g.setTransform(r, 0, 0, r, 0, 0);
      return g;
    }
    function layoutRollout() {
      Z = +zoom.value;
      $("rollout-zoom-out").textContent = `${Z} px`;
      const g = rTop.getContext("2d");
      g.font = labelFont();
      const width = (ts) => Math.min(160, 8 + Math.max(...ts.map((t) => g.measureText(t).width)));
      LW = width(Q.tokens); LH = width(Q.keys);
      const grid = $("rollout-grid");
      grid.style.gridTemplateColumns = `${LW}px ${s * Z}px`;
      grid.style.gridTemplateRows = `${LH}px ${l * Z}px`;
      $("rollout-corner").style.width = LW + "px";
    }
    function drawRollout() {
      if (!ROLL) return;
      const f = F.focus, fi = f && f.side === "q" ? f.i : -1, step = Math.max(1, Math.ceil(8 / Z)); // labels of >= 8 px
      const g = sized(rc, s * Z, l * Z);
      g.imageSmoothingEnabled = false;
      g.drawImage(heat, 0, 0, s * Z, l * Z);
      if (fi >= 0) { // the focused row: outlined and shaded
        g.fillStyle = "rgba(255, 196, 0, 0.25)"; g.fillRect(0, fi * Z, s * Z, Z);
        g.strokeStyle = "#1d2733"; g.lineWidth = 2; g.strokeRect(1, fi * Z + 1, s * Z - 2, Z - 2);
      }
      const left = sized(rLeft, LW, l * Z);
      left.font = labelFont(); left.textAlign = "right"; left.textBaseline = "middle";
      for (let i = 0; i < l; i++) {
        if (i === fi) { left.fillStyle = "rgba(255, 196, 0, 0.6)"; left.fillRect(0, i * Z, LW, Z); }
        if (i % step && i !== fi) continue;
        left.fillStyle = i === fi ? "#000" : Q.special[i] ? "#5b6775" : "#1d2733";
        left.fillText(Q.tokens[i], LW - 4, i * Z + Z / 2, LW - 6);
      }
      const top = sized(rTop, s * Z, LH);
      top.font = labelFont(); top.textAlign = "left"; top.textBaseline = "middle";
      for (let j = 0; j < s; j += step) {
        top.fillStyle = Q.special[j] ? "#5b6775" : "#1d2733";
        if ([...Q.keys[j]].length === 1) { // one character (e.g. 北): upright, it would read sideways
          top.textAlign = "center"; top.textBaseline = "bottom"; top.fillText(Q.keys[j], j * Z + Z / 2, LH - 3);
          top.textAlign = "left"; top.textBaseline = "middle";
          continue;
        }
        top.save(); top.translate(j * Z + Z / 2, LH - 4); top.rotate(-Math.PI / 2);
        top.fillText(Q.keys[j], 0, 0, LH - 6);
        top.restore();
      }
    }
    function drawRolloutInfo() {
      if (!ROLL) return;
      const f = F.focus;
      if (!f || f.side !== "q") { $("rollout-info").textContent = "Click a row (or focus a token in the head view)."; return; }
      const ranked = [...Array(s).keys()].map((j) => [j, (ROLL[f.i * s + j] / 255) * ROLL_MAX[f.i]]).sort((a, b) => b[1] - a[1]);
      $("rollout-info").textContent = `"${Q.tokens[f.i]}" (token ${f.i}) after ${N} layers is made of:\n` +
        ranked.slice(0, 12).map(([j, w]) => `${keyName(j).padEnd(14)} ${fmt(w)}`).join("\n");
    }

    // ---- views --------------------------------------------------------------------------
    let scrolledTo = null;
    function show(view) {
      S.view = view;
      document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.view === view));
      for (const v of ["head", "model", "rollout"]) $(`${v}-view`).hidden = v !== view;
      redraw();
    }
    function render() {
      if (S.view === "head") drawHead();
      else if (S.view === "model" && !modelBuilt) buildModel();
      else if (S.view === "rollout") {
        if (!rolloutBuilt) buildRollout();
        drawRollout(); drawRolloutInfo();
        const fi = F.focus && F.focus.side === "q" ? F.focus.i : null;
        if (fi !== null && fi !== scrolledTo && ROLL) { rScroll.scrollTop = Math.max(0, fi * Z - rScroll.clientHeight / 2 + LH); scrolledTo = fi; }
      }
      document.body.dataset.view = S.view;
    }

    current = { show, dispose: () => ac.abort() };
    show(S.view);
    if (S.view === "head") sizeCanvas();
    if (F.focus) scroller.scrollTop = Math.max(0, F.focus.i * ROW - VH / 2);
    render();
    document.body.dataset.sequence = `${index}`;
  }

  function fail(err) {
    document.body.dataset.error = String(err);
    console.error("attnkit viewer:", err);
    status.textContent = `viewer error: ${err}`;
  }

  await mount(D.start.sequence, D.start.focus);
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

// The Search tab: a phrase against the server's collection index (POST /v1/search),
// results as a grid of thumbnails with the chosen mask drawn; a click opens the full image
// with its candidates. Shown only when /v1/models says the server has an index.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const els = {
    tabs: $("tabs"),
    tabSegment: $("tab-segment"),
    tabSearch: $("tab-search"),
    segmentView: $("segment-view"),
    searchView: $("search-view"),
    form: $("search-form"),
    phrase: $("search-phrase"),
    submit: $("search-submit"),
    status: $("search-status"),
    error: $("search-error"),
    empty: $("search-empty"),
    grid: $("search-grid"),
    detail: $("search-detail"),
    detailRank: $("detail-rank"),
    detailName: $("detail-name"),
    detailClose: $("detail-close"),
    detailCanvas: $("detail-canvas"),
    detailCandidates: $("detail-candidates"),
  };
  const COLORS = { answer: [229, 72, 77], candidate: [46, 125, 246] };
  const THUMB = 360;
  const state = { last: null, bitmaps: {}, controller: null, detail: null };

  function show(el, on) { el.hidden = !on; }
  function setStatus(text) { els.status.textContent = text || ""; show(els.status, Boolean(text)); }
  function setError(text) { els.error.textContent = text || ""; show(els.error, Boolean(text)); }
  function fmt(x, d = 4) { return typeof x === "number" && isFinite(x) ? x.toFixed(d) : "–"; }

  // requests go through the page's one API helper (it adds the API key and asks for it
  // on a 401), defined in app.js
  const api = (path, options) => window.hybridgl.api(path, options);

  // the image behind a hit, fetched once (with the API key when there is one)
  async function bitmapFor(hit) {
    if (!state.bitmaps[hit.image_id]) {
      state.bitmaps[hit.image_id] = api(hit.image_url).then(async (r) => {
        if (!r.ok) throw new Error(`image ${hit.name}: HTTP ${r.status}`);
        return createImageBitmap(await r.blob());
      });
    }
    return state.bitmaps[hit.image_id];
  }

  // draw an image scaled into a canvas, then a mask (RLE) tinted with its outline opaque
  function drawMasked(canvas, bitmap, rle, color, maxSide) {
    const m = window.hybridgl.decodeRle(rle);
    const scale = maxSide ? Math.min(1, maxSide / Math.max(m.width, m.height)) : 1;
    canvas.width = Math.max(1, Math.round(m.width * scale));
    canvas.height = Math.max(1, Math.round(m.height * scale));
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (bitmap) ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const off = document.createElement("canvas");
    off.width = m.width;
    off.height = m.height;
    const octx = off.getContext("2d");
    const img = octx.createImageData(m.width, m.height);
    const px = img.data, d = m.data, w = m.width, h = m.height;
    for (let y = 0; y < h; y += 1) {
      for (let x = 0; x < w; x += 1) {
        const i = y * w + x;
        if (!d[i]) continue;
        const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
          !d[i - 1] || !d[i + 1] || !d[i - w] || !d[i + w];
        const o = i * 4;
        px[o] = color[0]; px[o + 1] = color[1]; px[o + 2] = color[2];
        px[o + 3] = edge ? 255 : 115;
      }
    }
    octx.putImageData(img, 0, 0);
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
  }

  // the tabs: each button shows the view it controls and hides the others
  function selectTab(name) {
    document.querySelectorAll("#tabs .tab").forEach((tab) => {
      const on = tab.id === `tab-${name}`;
      tab.setAttribute("aria-selected", String(on));
      show(document.getElementById(tab.getAttribute("aria-controls")), on);
    });
    if (name === "search") els.phrase.focus();
  }

  function renderGrid(body) {
    els.grid.textContent = "";
    show(els.detail, false);
    show(els.grid, true);
    show(els.empty, body.hits.length === 0);
    body.hits.forEach((hit, i) => {
      const fig = document.createElement("figure");
      fig.className = "card hit";
      fig.tabIndex = 0;
      fig.dataset.rank = String(hit.rank);
      const canvas = document.createElement("canvas");
      const cap = document.createElement("figcaption");
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = `#${hit.rank} · ${fmt(hit.similarity)}`;
      cap.appendChild(score);
      cap.appendChild(document.createElement("br"));
      cap.appendChild(document.createTextNode(hit.name));
      fig.appendChild(canvas);
      fig.appendChild(cap);
      els.grid.appendChild(fig);
      bitmapFor(hit)
        .then((bm) => {
          drawMasked(canvas, bm, hit.mask, COLORS.answer, THUMB);
          fig.dataset.drawn = "true";
        })
        .catch((e) => setError(e.message || String(e)));
      const open = () => openDetail(i);
      fig.addEventListener("click", open);
      fig.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); }
      });
    });
  }

  async function drawDetail(hit, which) {
    const bm = await bitmapFor(hit);
    const cands = hit.candidates || [];
    const rle = which === "answer" ? hit.mask : (cands[which].mask || hit.mask);
    drawMasked(els.detailCanvas, bm, rle, which === "answer" ? COLORS.answer : COLORS.candidate, 0);
    els.detailCanvas.dataset.shown = which === "answer" ? "answer" : `candidate-${which}`;
    els.detailCandidates.querySelectorAll("li").forEach((li) => {
      const on = which === "answer" ? li.dataset.answer === "true" : li.dataset.rank === String(which);
      li.className = on ? "selected" : "";
    });
  }

  function openDetail(i) {
    const hit = state.last.hits[i];
    state.detail = hit;
    els.detailRank.textContent = `#${hit.rank} · score ${fmt(hit.similarity)}`;
    els.detailName.textContent = hit.name;
    els.detailCandidates.textContent = "";
    (hit.candidates || []).forEach((c, rank) => {
      const li = document.createElement("li");
      li.tabIndex = 0;
      li.dataset.rank = String(rank);
      li.dataset.answer = String(c.index === hit.index);
      li.textContent = `proposal ${c.index} · CLIP ${fmt(c.clip_score, 2)}` +
        (c.final_score !== null && c.final_score !== undefined ? ` · final ${fmt(c.final_score, 3)}` : "");
      li.addEventListener("click", () => drawDetail(hit, c.index === hit.index ? "answer" : rank));
      els.detailCandidates.appendChild(li);
    });
    show(els.grid, false);
    show(els.detail, true);
    drawDetail(hit, "answer").catch((e) => setError(e.message || String(e)));
  }

  async function search(phrase) {
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    setError("");
    show(els.empty, false);
    setStatus("Searching…");
    els.submit.disabled = true;
    try {
      const body = await window.hybridgl.apiJson("/v1/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(Object.assign(
          { expression: phrase, top: 12, candidate_masks: true },
          window.hybridgl.searchOptions ? window.hybridgl.searchOptions() : {}, // targets.js
        )),
        signal: controller.signal,
      });
      state.last = body;
      renderGrid(body);
      if (window.hybridgl.onSearch) window.hybridgl.onSearch(body); // targets.js
      setStatus("");
    } catch (e) {
      if (e.name === "AbortError") return;
      setStatus("");
      setError(e.message || String(e));
    } finally {
      if (state.controller === controller) {
        state.controller = null;
        els.submit.disabled = false;
      }
    }
  }

  async function init() {
    try {
      const r = await api("/v1/models");
      const body = await r.json();
      show(els.tabs, true); // the Video tab is always there
      show(els.tabSearch, Boolean(body.search));
    } catch (e) {
      /* app.js reports an unreachable server or a missing key */
    }
  }

  els.tabSegment.addEventListener("click", () => selectTab("segment"));
  els.tabSearch.addEventListener("click", () => selectTab("search"));
  $("tab-video").addEventListener("click", () => selectTab("video"));
  els.detailClose.addEventListener("click", () => { show(els.detail, false); show(els.grid, true); });
  els.form.addEventListener("submit", (e) => {
    e.preventDefault();
    const phrase = els.phrase.value.trim();
    if (!phrase) { setError("Type a phrase to search for."); return; }
    search(phrase);
  });
  window.hybridglSearch = { state, selectTab };
  init();
})();

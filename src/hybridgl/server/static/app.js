// hybridgl web demo: plain JavaScript, no build step.
// Sends the image and a phrase to POST /v1/segment (candidate_masks=true) and draws the
// returned COCO RLE masks onto a canvas over the image.
"use strict";

(function () {
  // ------------------------------------------------------------------ COCO RLE
  // Compressed COCO RLE: counts are LEB128-like 5-bit groups offset by 48, each count after
  // the second stored as a difference to the count two places back. Runs alternate
  // background/foreground, starting with background, over pixels in column-major order.
  function rleCounts(str) {
    const counts = [];
    let p = 0;
    while (p < str.length) {
      let x = 0;
      let k = 0;
      let more = 1;
      while (more) {
        const c = str.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = c & 0x20;
        p += 1;
        k += 1;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  // Returns {height, width, data: Uint8Array(height*width) row-major, 1 = inside}.
  function decodeRle(rle) {
    const h = rle.size[0];
    const w = rle.size[1];
    const counts = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
    const data = new Uint8Array(h * w);
    let pos = 0;
    for (let i = 0; i < counts.length; i += 1) {
      const n = counts[i];
      if (i % 2 === 1) {
        for (let j = pos; j < pos + n; j += 1) {
          const col = Math.floor(j / h);
          const row = j - col * h;
          data[row * w + col] = 1;
        }
      }
      pos += n;
    }
    return { height: h, width: w, data };
  }

  function maskArea(rle) {
    return decodeRle(rle).data.reduce((a, b) => a + b, 0);
  }

  // ------------------------------------------------------------------ state + elements
  const $ = (id) => document.getElementById(id);
  const els = {
    drop: $("drop-zone"),
    file: $("file-input"),
    canvas: $("canvas"),
    imageInfo: $("image-info"),
    change: $("change-image"),
    form: $("query-form"),
    phrase: $("phrase"),
    submit: $("submit"),
    status: $("status"),
    error: $("error"),
    result: $("result"),
    expression: $("result-expression"),
    score: $("result-score"),
    np: $("parse-np"),
    relation: $("parse-relation"),
    direction: $("parse-direction"),
    context: $("parse-context"),
    candidates: $("candidates"),
    timing: $("timing"),
    modelInfo: $("model-info"),
    keyForm: $("key-form"),
    key: $("api-key"),
  };
  const state = {
    file: null,
    bitmap: null, // the decoded image (browser side), drawn under the masks
    last: null, // last JSON response
    selected: null, // "answer" or a candidate rank
    controller: null,
    maxUpload: null,
  };
  const COLORS = { answer: [229, 72, 77], candidate: [46, 125, 246] };

  // ------------------------------------------------------------------ helpers
  function show(el, on) {
    el.hidden = !on;
  }
  function setStatus(text) {
    els.status.textContent = text || "";
    show(els.status, Boolean(text));
  }
  function setError(text) {
    els.error.textContent = text || "";
    show(els.error, Boolean(text));
  }
  function fmt(x, digits = 3) {
    return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
  }
  function fmtMs(ms) {
    if (typeof ms !== "number") return "–";
    return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : Math.round(ms) + " ms";
  }

  // ------------------------------------------------------------------ drawing
  function drawBase() {
    const c = els.canvas;
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    if (state.bitmap) ctx.drawImage(state.bitmap, 0, 0, c.width, c.height);
  }

  function drawMask(rle, box, color, label) {
    const m = decodeRle(rle);
    const off = document.createElement("canvas");
    off.width = m.width;
    off.height = m.height;
    const octx = off.getContext("2d");
    const img = octx.createImageData(m.width, m.height);
    const px = img.data;
    const d = m.data;
    const w = m.width;
    const h = m.height;
    for (let y = 0; y < h; y += 1) {
      for (let x = 0; x < w; x += 1) {
        const i = y * w + x;
        if (!d[i]) continue;
        const edge =
          x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
          !d[i - 1] || !d[i + 1] || !d[i - w] || !d[i + w];
        const o = i * 4;
        px[o] = color[0];
        px[o + 1] = color[1];
        px[o + 2] = color[2];
        px[o + 3] = edge ? 255 : 115;
      }
    }
    octx.putImageData(img, 0, 0);
    const ctx = els.canvas.getContext("2d");
    ctx.drawImage(off, 0, 0, els.canvas.width, els.canvas.height);
    if (box && box[2] > 0 && box[3] > 0) {
      const sx = els.canvas.width / m.width;
      const sy = els.canvas.height / m.height;
      const lw = Math.max(2, Math.round(els.canvas.width / 320));
      ctx.lineWidth = lw;
      ctx.strokeStyle = `rgb(${color.join(",")})`;
      ctx.setLineDash([lw * 3, lw * 2]);
      ctx.strokeRect(box[0] * sx, box[1] * sy, (box[2] + 1) * sx, (box[3] + 1) * sy);
      ctx.setLineDash([]);
      if (label) {
        const fs = Math.max(12, Math.round(els.canvas.width / 45));
        ctx.font = `600 ${fs}px system-ui, sans-serif`;
        const tw = ctx.measureText(label).width + fs * 0.8;
        const tx = Math.max(0, Math.min(box[0] * sx, els.canvas.width - tw));
        const ty = Math.max(0, box[1] * sy - fs * 1.5);
        ctx.fillStyle = `rgb(${color.join(",")})`;
        ctx.fillRect(tx, ty, tw, fs * 1.5);
        ctx.fillStyle = "white";
        ctx.fillText(label, tx + fs * 0.4, ty + fs * 1.1);
      }
    }
  }

  function render(selection) {
    const res = state.last && state.last.results[0];
    drawBase();
    if (!res) return;
    state.selected = selection;
    if (selection === "answer") {
      const hook = window.hybridgl && window.hybridgl.drawAnswer; // targets.js: every target
      if (hook && hook(res)) {
        // drawn by the hook
      } else if (res.found) drawMask(res.mask, res.box, COLORS.answer, res.parse.noun_phrase || res.expression);
    } else {
      const cand = res.candidates[selection];
      if (cand && cand.mask) {
        drawMask(cand.mask, cand.box, COLORS.candidate, `#${selection + 1} · proposal ${cand.index}`);
      }
    }
    els.canvas.dataset.shown = selection === "answer" ? "answer" : `candidate-${selection}`;
    for (const li of els.candidates.querySelectorAll("li")) {
      const rank = li.dataset.rank;
      li.classList.toggle("selected", String(selection) === rank || (selection === "answer" && li.dataset.answer === "true"));
    }
  }

  // ------------------------------------------------------------------ results
  // Bar length: the softmax probability over all proposals (final scores may be negative).
  function candidateScore(c) {
    return typeof c.probability === "number" ? c.probability : 0;
  }

  function showResult(body, clientMs) {
    state.last = body;
    const res = body.results[0];
    els.expression.textContent = `“${res.expression}”`;
    els.score.textContent = res.found ? `score ${fmt(res.score)}` : "no mask";
    els.score.classList.toggle("none", !res.found);

    const p = res.parse || {};
    els.np.textContent = p.noun_phrase || "–";
    els.relation.textContent = p.relation || "none";
    els.direction.textContent = p.direction || "none";
    els.context.textContent = (p.context_nouns || []).join(", ") || "–";

    els.candidates.replaceChildren();
    const best = Math.max(1e-9, ...res.candidates.map((c) => candidateScore(c) || 0));
    res.candidates.forEach((c, rank) => {
      const li = document.createElement("li");
      li.dataset.rank = String(rank);
      li.dataset.answer = String(c.index === res.index);
      li.tabIndex = 0;
      li.setAttribute("role", "button");
      const s = candidateScore(c);
      const pct = Math.max(2, Math.round((100 * (s || 0)) / best));
      li.innerHTML = `
        <span class="rank">${rank + 1}</span>
        <span class="cand-body">
          <span class="cand-title">proposal ${c.index}${c.index === res.index ? ' <span class="tag">answer</span>' : ""}${c.index === res.pure_index && c.index !== res.index ? ' <span class="tag alt">CLIP-only</span>' : ""}</span>
          <span class="bar"><span style="width:${pct}%"></span></span>
          <span class="cand-scores muted small">final ${fmt(c.final_score)} · p ${fmt(c.probability)} · clip ${fmt(c.clip_score, 2)}</span>
        </span>`;
      const pick = () => render(rank);
      li.addEventListener("click", pick);
      li.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          pick();
        }
      });
      els.candidates.appendChild(li);
    });
    if (!res.candidates.length) {
      const li = document.createElement("li");
      li.className = "empty muted";
      li.textContent = "No proposals on this image.";
      els.candidates.appendChild(li);
    }

    const t = body.timings || {};
    els.timing.innerHTML = `
      <span><b>${fmtMs(clientMs)}</b> round trip</span>
      <span>${fmtMs(t.total_ms)} on the server</span>
      <span>image ${fmtMs(t.image_ms)} · text ${fmtMs(t.predict_ms)}</span>
      <span class="badge ${body.cache_hit ? "hit" : "miss"}">${body.cache_hit ? "cache hit" : "new image"}</span>`;
    els.imageInfo.textContent = `${body.image.width}×${body.image.height} px · ${body.image.num_proposals} proposals · sha256 ${body.image.sha256.slice(0, 12)}…`;
    show(els.result, true);
    if (window.hybridgl.onResult) window.hybridgl.onResult(res); // targets.js: legend
    render("answer");
  }

  // ------------------------------------------------------------------ requests
  // A server started with an API key answers 401 to the API: the page then asks for the
  // key and sends it as a bearer token (kept for this browser tab only).
  const KEY_STORE = "hybridgl.apiKey";
  class NeedKey extends Error {}

  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    const key = sessionStorage.getItem(KEY_STORE);
    opts.headers = Object.assign({}, opts.headers || {});
    if (key) opts.headers.Authorization = `Bearer ${key}`;
    const r = await fetch(path, opts);
    if (r.status === 401) {
      show(els.keyForm, true);
      els.key.focus();
      throw new NeedKey(key ? "The API key was not accepted; enter it again." : "This server needs an API key: enter it above.");
    }
    return r;
  }

  // A JSON API call: the parsed body, or an Error carrying the server's JSON error message.
  async function apiJson(path, options) {
    const r = await api(path, options);
    let body = null;
    try {
      body = await r.json();
    } catch (e) {
      body = null;
    }
    if (!r.ok) throw new Error(body && body.error ? body.error.message : `HTTP ${r.status}`);
    return body;
  }

  async function segment(phrase) {
    if (!state.file) return;
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    const fd = new FormData();
    fd.append("image", state.file, state.file.name || "image");
    fd.append("expression", phrase);
    setError("");
    setStatus("Segmenting…");
    els.submit.disabled = true;
    const t0 = performance.now();
    try {
      const extra = window.hybridgl.segmentQuery ? window.hybridgl.segmentQuery() : ""; // targets.js
      const body = await apiJson("/v1/segment?candidate_masks=true&polygons=false" + extra, {
        method: "POST",
        body: fd,
        signal: controller.signal,
      });
      showResult(body, performance.now() - t0);
      setStatus("");
    } catch (e) {
      if (e.name === "AbortError") return;
      setStatus("");
      setError(e.message || String(e));
    } finally {
      if (state.controller === controller) {
        state.controller = null;
        els.submit.disabled = !state.file;
      }
    }
  }

  async function loadFile(file) {
    if (!file) return;
    setError("");
    if (file.type && !file.type.startsWith("image/")) {
      setError(`${file.name} is not an image.`);
      return;
    }
    if (state.maxUpload && file.size > state.maxUpload) {
      setError(`${file.name} is ${(file.size / 1e6).toFixed(1)} MB; the server accepts at most ${(state.maxUpload / 1e6).toFixed(1)} MB.`);
      return;
    }
    let bitmap;
    try {
      bitmap = await createImageBitmap(file);
    } catch (e) {
      setError(`Cannot read ${file.name} as an image.`);
      return;
    }
    state.file = file;
    state.bitmap = bitmap;
    state.last = null;
    els.canvas.width = bitmap.width;
    els.canvas.height = bitmap.height;
    delete els.canvas.dataset.shown;
    show(els.canvas, true);
    els.drop.classList.add("has-image");
    show(els.change, true);
    show(els.result, false);
    els.imageInfo.textContent = `${file.name} · ${bitmap.width}×${bitmap.height} px`;
    drawBase();
    els.phrase.disabled = false;
    els.submit.disabled = false;
    els.phrase.focus();
  }

  async function loadModelInfo() {
    try {
      const r = await api("/v1/models");
      const body = await r.json();
      show(els.keyForm, false);
      const m = body.model || {};
      state.maxUpload = body.limits ? body.limits.max_upload_bytes : null;
      const bits = [m.sam && `SAM ${m.sam}`, m.clip && `CLIP ${m.clip}`, m.preset && `preset ${m.preset}`, m.device];
      els.modelInfo.textContent = bits.filter(Boolean).join(" · ") || "model loading";
      if (body.random_weights) {
        const warn = document.createElement("span");
        warn.className = "warn";
        warn.title = "The server runs randomly initialised weights: masks are meaningless.";
        warn.textContent = "random weights";
        els.modelInfo.appendChild(warn);
      }
    } catch (e) {
      els.modelInfo.textContent = e instanceof NeedKey ? "API key needed" : "server unreachable";
    }
  }

  // ------------------------------------------------------------------ events
  els.drop.addEventListener("click", (e) => {
    if (!state.file) els.file.click();
  });
  els.drop.addEventListener("keydown", (e) => {
    if (!state.file && (e.key === "Enter" || e.key === " ")) {
      e.preventDefault();
      els.file.click();
    }
  });
  els.change.addEventListener("click", () => els.file.click());
  els.file.addEventListener("change", () => loadFile(els.file.files[0]));
  ["dragenter", "dragover"].forEach((t) =>
    els.drop.addEventListener(t, (e) => {
      e.preventDefault();
      els.drop.classList.add("dragging");
    }),
  );
  ["dragleave", "drop"].forEach((t) =>
    els.drop.addEventListener(t, (e) => {
      e.preventDefault();
      els.drop.classList.remove("dragging");
    }),
  );
  els.drop.addEventListener("drop", (e) => {
    const f = e.dataTransfer && e.dataTransfer.files[0];
    if (f) loadFile(f);
  });
  els.form.addEventListener("submit", (e) => {
    e.preventDefault();
    const phrase = els.phrase.value.trim();
    if (!phrase) {
      setError("Type a phrase first, e.g. “the dog on the right”.");
      return;
    }
    segment(phrase);
  });

  els.keyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const key = els.key.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    els.key.value = "";
    setError("");
    loadModelInfo();
  });

  window.hybridgl = Object.assign(window.hybridgl || {}, { api, apiJson, decodeRle, maskArea, state, drawMask });
  loadModelInfo();
})();

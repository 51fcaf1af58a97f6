// The Scan tab: a DICOM file or NIfTI volume and a phrase to POST /v1/volume; a slice slider
// and a window control (preset, or level and width) show each slice from
// GET /v1/volume/{id}/slice/{k}.png with the mask drawn over it. Not a diagnostic device.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("scan-form"),
    file: $("scan-file"),
    phrase: $("scan-phrase"),
    submit: $("scan-submit"),
    status: $("scan-status"),
    error: $("scan-error"),
    result: $("scan-result"),
    canvas: $("scan-canvas"),
    slider: $("scan-slice"),
    sliceInfo: $("scan-slice-info"),
    preset: $("scan-preset"),
    level: $("scan-level"),
    width: $("scan-width"),
    summary: $("scan-summary"),
  };
  // CT presets (level, width in HU): docs/MEDICAL.md
  const PRESETS = {
    abdomen: [50, 400], liver: [30, 150], mediastinum: [50, 350], lung: [-600, 1500],
    bone: [400, 1800], brain: [40, 80], subdural: [75, 215], stroke: [40, 40],
  };
  const state = { body: null, slice: 0, loaded: 0, requested: 0 };

  function show(el, on) { el.hidden = !on; }
  function setStatus(text) { els.status.textContent = text || ""; show(els.status, Boolean(text)); }
  function setError(text) { els.error.textContent = text || ""; show(els.error, Boolean(text)); }

  function windowParam() {
    const l = Number(els.level.value);
    const w = Number(els.width.value);
    if (els.level.value !== "" && els.width.value !== "" && Number.isFinite(l) && w > 0) return `${l},${w}`;
    return "auto";
  }

  function draw(img, k) {
    const ctx = els.canvas.getContext("2d");
    els.canvas.width = img.naturalWidth;
    els.canvas.height = img.naturalHeight;
    ctx.drawImage(img, 0, 0);
    const rle = state.body.masks[String(k)];
    if (rle) {
      const m = window.hybridgl.decodeRle(rle);
      const px = ctx.getImageData(0, 0, m.width, m.height);
      for (let i = 0; i < m.data.length; i += 1) {
        if (m.data[i]) {
          px.data[4 * i] = Math.round(px.data[4 * i] * 0.5 + 127);
          px.data[4 * i + 1] = Math.round(px.data[4 * i + 1] * 0.5);
          px.data[4 * i + 2] = Math.round(px.data[4 * i + 2] * 0.5);
        }
      }
      ctx.putImageData(px, 0, 0);
    }
    els.canvas.dataset.slice = String(k);
    els.canvas.dataset.mask = rle ? "1" : "0";
    state.loaded += 1;
    els.canvas.dataset.loaded = String(state.loaded);
  }

  async function showSlice(k) {
    const body = state.body;
    if (!body) return;
    state.slice = k;
    const n = state.requested += 1;
    const rec = body.records.find((r) => r.index === k);
    els.sliceInfo.textContent = `slice ${k} of ${body.num_slices - 1}` +
      (rec ? ` · ${rec.found ? "object" : "absent"} (${rec.source})` : " · not visited");
    const url = `/v1/volume/${body.volume_id}/slice/${k}.png?axis=${body.axis}&window=${encodeURIComponent(windowParam())}`;
    try {
      const r = await window.hybridgl.api(url);
      if (!r.ok) throw new Error((await r.json()).error.message);
      const blob = await r.blob();
      if (n !== state.requested) return; // a newer slice was asked for meanwhile
      const img = new Image();
      img.onload = () => { draw(img, k); URL.revokeObjectURL(img.src); };
      img.src = URL.createObjectURL(blob);
    } catch (e) {
      setError(e.message);
    }
  }

  function render(body) {
    state.body = body;
    const w = body.window;
    if (w) { els.level.value = String(w.level); els.width.value = String(w.width); }
    els.slider.min = "0";
    els.slider.max = String(body.num_slices - 1);
    const k = body.key_slice !== null && body.key_slice !== undefined ? body.key_slice : 0;
    els.slider.value = String(k);
    const ext = body.extent ? `slices ${body.extent[0]}–${body.extent[1]}, ${body.volume_ml.toFixed(2)} mL` : "not found";
    els.summary.textContent = `${body.expression}: ${ext} (${body.shape.join(" × ")}; key slice ${body.key_slice})`;
    show(els.result, true);
    showSlice(k);
  }

  async function segment(file, phrase) {
    const fd = new FormData();
    fd.append("file", file, file.name || "scan");
    fd.append("expression", phrase);
    const preset = els.preset.value;
    fd.append("window", preset === "custom" ? windowParam() : preset);
    setError("");
    setStatus("Segmenting the volume… (slice by slice from the key slice)");
    els.submit.disabled = true;
    try {
      const body = await window.hybridgl.apiJson("/v1/volume", { method: "POST", body: fd });
      render(body);
      setStatus(`${body.records.length} slices visited, ${(body.timings.total_ms / 1000).toFixed(1)} s`);
    } catch (e) {
      setStatus("");
      setError(e.message);
    } finally {
      els.submit.disabled = false;
    }
  }

  els.preset.addEventListener("change", () => {
    const p = PRESETS[els.preset.value];
    if (p) { els.level.value = String(p[0]); els.width.value = String(p[1]); }
    if (state.body) showSlice(state.slice);
  });
  for (const el of [els.level, els.width]) {
    el.addEventListener("change", () => { els.preset.value = "custom"; if (state.body) showSlice(state.slice); });
  }
  els.slider.addEventListener("input", () => showSlice(Number(els.slider.value)));
  els.form.addEventListener("submit", (e) => {
    e.preventDefault();
    const file = els.file.files && els.file.files[0];
    const phrase = els.phrase.value.trim();
    if (!file) { setError("Choose a DICOM file or a NIfTI volume first."); return; }
    if (!phrase) { setError("Type what to segment."); return; }
    segment(file, phrase);
  });
  $("tab-scan").addEventListener("click", () => window.hybridglSearch.selectTab("scan"));
  window.hybridglScan = { state, showSlice };
})();

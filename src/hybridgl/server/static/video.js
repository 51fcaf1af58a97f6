// The Video tab: a short clip and a phrase to POST /v1/track; the overlay video plays and
// the table lists each frame's state (keyframe, tracked, regrounded, absent).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("video-form"),
    file: $("video-file"),
    phrase: $("video-phrase"),
    submit: $("video-submit"),
    status: $("video-status"),
    error: $("video-error"),
    result: $("video-result"),
    player: $("video-player"),
    states: document.querySelector("#video-states tbody"),
  };
  const state = { last: null, url: null };

  function show(el, on) { el.hidden = !on; }
  function setStatus(text) { els.status.textContent = text || ""; show(els.status, Boolean(text)); }
  function setError(text) { els.error.textContent = text || ""; show(els.error, Boolean(text)); }

  function base64ToBlob(b64, type) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Blob([bytes], { type });
  }

  function render(body) {
    els.states.textContent = "";
    for (const rec of body.records) {
      const tr = document.createElement("tr");
      tr.dataset.state = rec.state;
      for (const text of [rec.frame, `${rec.object_id}: ${rec.expression}`, rec.state, rec.area]) {
        const td = document.createElement("td");
        td.textContent = String(text);
        tr.appendChild(td);
      }
      els.states.appendChild(tr);
    }
    if (state.url) URL.revokeObjectURL(state.url);
    state.url = null;
    if (body.overlay_video) {
      const v = body.overlay_video;
      state.url = URL.createObjectURL(base64ToBlob(v.base64, v.media_type));
      els.player.src = state.url;
    }
    show(els.player, Boolean(state.url));
    show(els.result, true);
  }

  async function track(file, phrase) {
    const fd = new FormData();
    fd.append("video", file, file.name || "clip");
    fd.append("expression", phrase);
    setError("");
    setStatus("Tracking… (the whole clip is processed before the answer comes)");
    els.submit.disabled = true;
    try {
      const extra = window.hybridgl.videoQuery ? window.hybridgl.videoQuery() : ""; // targets.js
      const body = await window.hybridgl.apiJson(`/v1/track?overlay=webm${extra}`, { method: "POST", body: fd });
      state.last = body;
      render(body);
      setStatus(`${body.frames} frames, tracker ${body.tracker}, ${(body.timings.total_ms / 1000).toFixed(1)} s`);
    } catch (e) {
      setStatus("");
      setError(e.message);
    } finally {
      els.submit.disabled = false;
    }
  }

  els.form.addEventListener("submit", (e) => {
    e.preventDefault();
    const file = els.file.files && els.file.files[0];
    const phrase = els.phrase.value.trim();
    if (!file) { setError("Choose a video file first."); return; }
    if (!phrase) { setError("Type what to follow."); return; }
    track(file, phrase);
  });
  window.hybridglVideo = { state };
})();

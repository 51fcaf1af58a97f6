// hybridgl web demo: zero, one or many targets (docs/TARGETS.md). Loaded after app.js.
// Adds a "Targets" choice to the query form (sent as ?targets=), draws every target of an
// answer in its own colour with a numbered legend, and says "Not found in this image" when
// the phrase names nothing. app.js calls the hooks segmentQuery, drawAnswer and onResult;
// search.js calls searchOptions and onSearch, video.js videoQuery.
"use strict";

(function () {
  const hg = window.hybridgl;
  if (!hg) return;
  // Target k's colour; the first is app.js's answer colour, none is the candidate blue.
  const PALETTE = [
    [229, 72, 77],
    [32, 160, 90],
    [235, 145, 20],
    [140, 80, 200],
    [20, 165, 180],
    [215, 70, 165],
    [140, 95, 45],
    [110, 135, 25],
  ];
  const RULES = {
    below_floor: "the best region matches the phrase less than the floor allows",
    contrast: "a generic prompt (background, a photo) describes the best region as well",
    no_proposal: "the image has no proposal",
  };

  // ------------------------------------------------------------------ the choice
  const form = document.getElementById("query-form");
  const wrap = document.createElement("div");
  wrap.className = "targets-choice";
  wrap.innerHTML = `
    <label for="targets-mode">Targets</label>
    <select id="targets-mode" name="targets">
      <option value="one">one: the single best object</option>
      <option value="auto">auto: several when the phrase names several</option>
      <option value="many">many: every object the phrase selects</option>
    </select>`;
  const row = form.querySelector(".query-row");
  row.after(wrap);
  const select = wrap.querySelector("select");

  // The same choice in another tab's form, under its own id.
  function choiceIn(otherForm, id) {
    const w = wrap.cloneNode(true);
    const s = w.querySelector("select");
    s.id = id;
    w.querySelector("label").htmlFor = id;
    otherForm.appendChild(w);
    return s;
  }

  // ------------------------------------------------------------------ the legend
  const card = document.getElementById("result");
  const legend = document.createElement("div");
  legend.id = "targets-legend";
  legend.className = "targets-legend";
  legend.setAttribute("aria-live", "polite");
  legend.hidden = true;
  card.querySelector(".result-head").after(legend);

  function colour(k) {
    return PALETTE[k % PALETTE.length];
  }

  function modeOf(res) {
    return (res.evidence && res.evidence.mode) || "one";
  }

  function fmt(x) {
    return typeof x === "number" && isFinite(x) ? x.toFixed(3) : "–";
  }

  function onResult(res) {
    legend.replaceChildren();
    const mode = modeOf(res);
    const score = document.getElementById("result-score");
    if (!res.found) {
      const ev = res.evidence || {};
      const p = document.createElement("p");
      p.className = "not-found";
      p.textContent = "Not found in this image";
      const why = document.createElement("p");
      why.className = "muted small";
      why.textContent = RULES[ev.rule] || ev.rule || "";
      if (typeof ev.cosine === "number") why.textContent += ` (cosine ${fmt(ev.cosine)})`;
      legend.append(p, why);
      legend.dataset.state = "not-found";
      score.textContent = "not found";
      legend.hidden = false;
      return;
    }
    if (mode === "one") {
      legend.dataset.state = "one";
      legend.hidden = true;
      return;
    }
    const targets = res.targets || [];
    const head = document.createElement("p");
    head.className = "small";
    head.textContent = `${targets.length} target${targets.length === 1 ? "" : "s"} (${mode})`;
    const list = document.createElement("ol");
    list.className = "targets-list";
    targets.forEach((t, k) => {
      const li = document.createElement("li");
      li.dataset.target = String(k);
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = `rgb(${colour(k).join(",")})`;
      const text = document.createElement("span");
      text.textContent = `${k + 1} · proposal ${t.index} · score ${fmt(t.score)} · ${t.area} px`;
      li.append(sw, text);
      list.appendChild(li);
    });
    legend.append(head, list);
    legend.dataset.state = "targets";
    legend.hidden = false;
  }

  // Draws every target; true when the answer is handled here (app.js then draws nothing).
  function drawAnswer(res) {
    if (modeOf(res) === "one") return false;
    if (!res.found) return true;
    const targets = res.targets || [];
    for (let k = targets.length - 1; k >= 0; k -= 1) {
      // the best last, on top
      hg.drawMask(targets[k].mask, targets[k].box, colour(k), String(k + 1));
    }
    return true;
  }

  function segmentQuery() {
    return select.value === "one" ? "" : `&targets=${encodeURIComponent(select.value)}`;
  }

  // ------------------------------------------------------------------ the Search tab
  // The same choice for POST /v1/search; with many/auto the answer says how many images
  // were dropped because the phrase has no target there.
  const searchForm = document.getElementById("search-form");
  let searchSelect = null;
  let dropped = null;
  if (searchForm) {
    searchSelect = choiceIn(searchForm, "search-targets-mode");
    dropped = document.createElement("p");
    dropped.id = "search-no-target";
    dropped.className = "muted small";
    dropped.hidden = true;
    searchForm.after(dropped);
  }

  function searchOptions() {
    return searchSelect && searchSelect.value !== "one" ? { targets: searchSelect.value } : {};
  }

  function onSearch(body) {
    if (!dropped) return;
    const n = body.no_target || 0;
    dropped.textContent = n
      ? `Dropped ${n} image${n === 1 ? "" : "s"} where the phrase has no target.`
      : "";
    dropped.hidden = !n;
  }

  // ------------------------------------------------------------------ the Video tab
  // The same choice for POST /v1/track: with many/auto one tracked object per target the
  // method finds on the first frame (the table lists each object's frames).
  const videoForm = document.getElementById("video-form");
  const videoSelect = videoForm ? choiceIn(videoForm, "video-targets-mode") : null;

  function videoQuery() {
    return videoSelect && videoSelect.value !== "one"
      ? `&targets=${encodeURIComponent(videoSelect.value)}`
      : "";
  }

  Object.assign(hg, {
    segmentQuery, drawAnswer, onResult, searchOptions, onSearch, videoQuery,
    targetColours: PALETTE,
  });
})();

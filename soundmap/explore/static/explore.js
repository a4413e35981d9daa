// soundmap explore: the page. State lives in the URL hash, so a link reproduces the view.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { text: "", audio: "", audioName: "", combine: false, hour: 12, hourOn: true, month: 6, monthOn: true,
    audio_source: "", caption_source: "", latlon: true, score: "", zoom: "", colormap: "magma", opacity: 75,
    uncertainty: false, lat: null, lon: null, z: null };
  let info = null, map = null, overlay = null, result = null, sweep = null, playing = null, fixedRange = null;

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    for (const [key, value] of params) {
      if (!(key in state)) continue;
      const current = state[key];
      if (typeof current === "boolean") state[key] = value === "1";
      else if (typeof current === "number" || key === "lat" || key === "lon" || key === "z") state[key] = Number(value);
      else state[key] = value;
    }
  }
  function writeHash() {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(state)) {
      if (value === null || value === "" || key === "audioName") continue;
      params.set(key, typeof value === "boolean" ? (value ? "1" : "0") : String(value));
    }
    history.replaceState(null, "", "#" + params.toString());
  }
  function setStatus(text, error) { $("status").textContent = text; $("status").className = error ? "small error" : "small"; }

  function request() {
    const takes = (c) => info.components.includes(c);
    return { text: state.text.split(";").map((t) => t.trim()).filter((t) => t.length),
      audio: state.audio ? [state.audio] : [], combine: state.combine,
      hour: takes("hour") && state.hourOn ? state.hour : null, month: takes("month") && state.monthOn ? state.month : null,
      audio_source: takes("audio_source") ? state.audio_source : "", caption_source: takes("caption_source") ? state.caption_source : "",
      latlon: takes("latlon") ? state.latlon : false, score: state.score, zoom: state.zoom || null };
  }
  function queryString(req) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(req)) {
      if (value === null || value === "" || (Array.isArray(value) && !value.length)) continue;
      params.set(key, Array.isArray(value) ? value.join("|") : String(value));
    }
    return params.toString();
  }

  async function postJSON(url, body) {
    const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const data = await response.json();
    return { status: response.status, data };
  }
  async function untilReady(url, body) {
    // 202 = a metadata setting is being fused: show its progress and ask again.
    for (;;) {
      const { status, data } = await postJSON(url, body);
      if (status === 202) {
        const job = data.pending;
        $("progress").hidden = false; $("progress").max = job.total || 1; $("progress").value = job.done;
        setStatus(`fusing ${job.label}: ${job.done}/${job.total} chunks…`);
        await new Promise((r) => setTimeout(r, 400));
        continue;
      }
      $("progress").hidden = true;
      if (status >= 400) throw new Error(data.error || data.detail || `error ${status}`);
      return data;
    }
  }

  async function runQuery() {
    writeHash();
    const req = request();
    if (!req.text.length && !req.audio.length) { setStatus("type a query (e.g. birds singing) or upload a sound", true); return; }
    setStatus("querying…");
    document.body.dataset.overlay = "loading";
    try {
      result = await untilReady("api/query", req);
      if (!playing) fixedRange = null;
      showResult();
    } catch (err) { setStatus(err.message, true); document.body.dataset.overlay = "error"; }
  }

  function range() {
    if (state.uncertainty && result.uncertainty_range) return result.uncertainty_range;
    return fixedRange ? fixedRange[0] : result.ranges[0];
  }
  function showResult() {
    const composite = result.labels.length === 3 && !state.uncertainty;
    const [low, high] = range();
    const params = new URLSearchParams({ colormap: state.colormap, layer: state.uncertainty ? "uncertainty" : "score" });
    if (fixedRange && !state.uncertainty && !composite) { params.set("low", low); params.set("high", high); }
    const url = `api/tiles/${result.key}/{z}/{x}/{y}.png?${params}`;
    const old = overlay;
    overlay = L.tileLayer(url, { opacity: state.opacity / 100, maxZoom: 22, tileSize: 256, zIndex: 10 });
    const key = result.key + (state.uncertainty ? ":u" : "") + ":" + state.colormap;
    overlay.on("load", () => {
      if (old) map.removeLayer(old);
      document.body.dataset.overlay = key;
    });
    overlay.addTo(map);
    drawLegend(composite, low, high);
    const meta = Object.entries(result.setting).map(([k, v]) => `${k} ${v}`).join(", ") || "no metadata";
    setStatus(`${result.labels.join(" / ")} — ${meta} — ${result.score}`);
    $("export-tif").href = "api/export?" + queryString({ ...request(), kind: "tif" });
    $("export-png").href = "api/export?" + queryString({ ...request(), kind: "png" });
  }
  function drawLegend(composite, low, high) {
    if (composite) {
      $("legend-bar").style.background = "none";
      $("legend-bar").innerHTML = result.labels.map((l, i) => `<span style="color:${["#d00", "#080", "#00d"][i]}">■ ${l}</span>`).join("<br>");
      $("legend-bar").style.height = "auto";
      $("legend-low").textContent = ""; $("legend-high").textContent = "";
      $("legend-label").textContent = "colour composite: each query on its own min–max range";
      return;
    }
    $("legend-bar").innerHTML = ""; $("legend-bar").style.height = "12px";
    const stops = { magma: ["#000004", "#721f81", "#f1605d", "#fcfdbf"], viridis: ["#440154", "#21918c", "#fde725"],
      inferno: ["#000004", "#932667", "#fca50a", "#fcffa4"], plasma: ["#0d0887", "#cc4778", "#f0f921"],
      cividis: ["#00224e", "#7d7c78", "#fee838"], turbo: ["#30123b", "#1ae4b6", "#fb8022", "#7a0403"], greys: ["#000", "#fff"] };
    $("legend-bar").style.background = `linear-gradient(to right, ${(stops[state.colormap] || stops.magma).join(",")})`;
    $("legend-low").textContent = Number(low).toFixed(3); $("legend-high").textContent = Number(high).toFixed(3);
    $("legend-label").textContent = state.uncertainty ? "uncertainty ‖σ‖₁ (higher = less sure)"
      : `${result.score === "csd" ? "−CSD" : "cosine"} score (higher = more likely heard)${fixedRange ? ", common scale over 24 h" : ""}`;
  }

  async function clickCell(event) {
    if (!result) return;
    const { lat, lng } = event.latlng;
    const response = await fetch(`api/cell?key=${result.key}&lat=${lat}&lon=${lng}`);
    const data = await response.json();
    $("cell").hidden = false;
    if (response.status >= 400) { $("cell-text").textContent = data.error; $("cell-image").hidden = true; return; }
    const lines = data.values.map((v) => v.score === null ? `${v.label}: no imagery`
      : `${v.label}: score ${v.score.toFixed(4)}, rank ${v.rank} of ${data.cells}`);
    lines.push(`lat ${data.lat.toFixed(5)}, lon ${data.lon.toFixed(5)} (cell ${data.row}, ${data.col}, zoom level ${data.zoom})`);
    if (data.uncertainty !== null) lines.push(`uncertainty ‖σ‖₁ ${data.uncertainty.toFixed(3)}`);
    $("cell-text").innerHTML = lines.map((l) => `<div class="cell-line">${l.replace(/</g, "&lt;")}</div>`).join("");
    $("cell-image").hidden = false; $("cell-image").src = data.image;
  }

  async function togglePlay() {
    if (playing) { clearInterval(playing); playing = null; $("play").textContent = "▶"; return; }
    setStatus("preparing 24 hours on one common scale…");
    try {
      const req = request(); delete req.hour;
      sweep = await untilReady("api/sweep", req);
    } catch (err) { setStatus(err.message, true); return; }
    fixedRange = sweep.ranges;
    $("play").textContent = "⏸"; state.hourOn = true; $("hour-on").checked = true;
    playing = setInterval(() => {
      state.hour = (state.hour + 1) % 24; $("hour").value = state.hour; $("hour-value").textContent = state.hour;
      runQuery();
    }, 1500);
  }

  async function uploadAudio() {
    const file = $("audio").files[0];
    if (!file) return;
    if (file.size > info.max_upload_bytes) { setStatus(`the file is over the ${info.max_upload_bytes / 1048576} MB limit`, true); return; }
    const form = new FormData(); form.append("file", file);
    const response = await fetch("api/upload", { method: "POST", body: form });
    const data = await response.json();
    if (response.status >= 400) { setStatus(data.error, true); return; }
    state.audio = data.id; state.audioName = data.name;
    $("audio-name").textContent = `${data.name} (${data.seconds} s)`;
    runQuery();
  }

  function bindControls() {
    const bind = (id, key, event, parse, rerun) => $(id).addEventListener(event, () => {
      state[key] = parse($(id)); if (rerun === "query") runQuery(); else if (rerun === "layer" && result) { writeHash(); showResult(); }
    });
    $("query-form").addEventListener("submit", (e) => { e.preventDefault(); state.text = $("text").value; runQuery(); });
    bind("hour", "hour", "change", (el) => { $("hour-value").textContent = el.value; return Number(el.value); }, "query");
    $("hour").addEventListener("input", () => { $("hour-value").textContent = $("hour").value; });
    bind("hour-on", "hourOn", "change", (el) => el.checked, "query");
    bind("month", "month", "change", (el) => { $("month-value").textContent = el.value; return Number(el.value); }, "query");
    $("month").addEventListener("input", () => { $("month-value").textContent = $("month").value; });
    bind("month-on", "monthOn", "change", (el) => el.checked, "query");
    bind("audio-source", "audio_source", "change", (el) => el.value, "query");
    bind("caption-source", "caption_source", "change", (el) => el.value, "query");
    bind("latlon", "latlon", "change", (el) => el.checked, "query");
    bind("combine", "combine", "change", (el) => el.checked, "query");
    bind("score", "score", "change", (el) => el.value, "query");
    bind("zoom", "zoom", "change", (el) => el.value, "query");
    bind("colormap", "colormap", "change", (el) => el.value, "layer");
    bind("uncertainty", "uncertainty", "change", (el) => el.checked, "layer");
    $("opacity").addEventListener("input", () => { state.opacity = Number($("opacity").value); if (overlay) overlay.setOpacity(state.opacity / 100); writeHash(); });
    $("audio").addEventListener("change", uploadAudio);
    $("play").addEventListener("click", togglePlay);
  }

  function applyState() {
    $("text").value = state.text; $("hour").value = state.hour; $("hour-value").textContent = state.hour;
    $("hour-on").checked = state.hourOn; $("month").value = state.month; $("month-value").textContent = state.month;
    $("month-on").checked = state.monthOn; $("audio-source").value = state.audio_source; $("caption-source").value = state.caption_source;
    $("latlon").checked = state.latlon; $("combine").checked = state.combine; $("score").value = state.score;
    $("colormap").value = state.colormap; $("opacity").value = state.opacity; $("uncertainty").checked = state.uncertainty;
    if (state.zoom) $("zoom").value = state.zoom;
  }

  async function start() {
    info = await (await fetch("api/info")).json();
    readHash();
    if (!state.score) state.score = info.default_score;
    $("model").textContent = `model ${info.model} · imagery ${info.source}`;
    $("imagery-attribution").textContent = info.attribution || "(no attribution recorded)";
    $("imagery-licence").textContent = info.licence ? `(${info.licence})` : "";
    const rows = { hour: "hour-row", month: "month-row", audio_source: "asource-row", caption_source: "csource-row", latlon: "latlon-row" };
    for (const [component, row] of Object.entries(rows)) $(row).hidden = !info.components.includes(component);
    $("uncertainty-row").hidden = !info.probabilistic;
    if (!info.probabilistic) { $("score").querySelector('option[value="csd"]').remove(); }
    $("zoom").innerHTML = info.zooms.map((z) => `<option value="${z}">${z}</option>`).join("");
    $("zoom-row").hidden = info.zooms.length < 2;
    $("colormap").innerHTML = info.colormaps.map((c) => `<option>${c}</option>`).join("");
    applyState();
    map = L.map("map", { attributionControl: false, maxZoom: 20 });
    const [west, south, east, north] = info.bbox;
    if (state.lat !== null && state.lon !== null && state.z !== null) map.setView([state.lat, state.lon], state.z);
    else map.fitBounds([[south, west], [north, east]]);
    if (info.basemap_zoom !== null) {
      L.tileLayer("api/basemap/{z}/{x}/{y}", { minNativeZoom: info.basemap_zoom, maxNativeZoom: info.basemap_zoom,
        maxZoom: 22, minZoom: 0, bounds: [[south, west], [north, east]], zIndex: 1 }).addTo(map);
    }
    L.geoJSON(info.outline, { style: { color: "#fff", weight: 2, fill: false, dashArray: "4 3" }, interactive: false }).addTo(map);
    map.on("moveend", () => { const c = map.getCenter(); state.lat = +c.lat.toFixed(5); state.lon = +c.lng.toFixed(5); state.z = map.getZoom(); writeHash(); });
    map.on("click", clickCell);
    bindControls();
    window.soundmapExplorer = { map, info };  // for scripts and the browser test
    document.body.dataset.ready = "1";
    if (state.text || state.audio) runQuery();
  }
  start();
})();

// The review page: drop photos, see verdicts and heat-maps, accept or reject each one.
// Talks only to this app's /api (same origin); the TorchServe key never reaches the browser.
"use strict";

(() => {
  const CHUNK_FILES = 4;          // files per upload request (the server allows more)
  const PARALLEL_UPLOADS = 2;     // upload requests in flight at once
  const HEALTH_POLL_MS = 3000;    // while the banner is up
  const SESSION_KEY = "review-session-rows";

  const $ = (id) => document.getElementById(id);
  const state = { limits: null, cards: [], selected: -1, healthTimer: null };

  // ---------------------------------------------------------------- small helpers
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function mib(bytes) {
    return `${(bytes / 1048576).toFixed(1)} MiB`;
  }

  async function readJson(resp) {
    try {
      return await resp.json();
    } catch (_err) {
      return { error: `the review app answered HTTP ${resp.status} without JSON`, status: resp.status };
    }
  }

  function reviewer() {
    return $("reviewer").value.trim();
  }

  function notice(text) {
    const box = $("notice");
    box.textContent = text;
    box.hidden = !text;
  }

  // ---------------------------------------------------------------- banner and health
  function showBanner(message) {
    const banner = $("banner");
    banner.textContent = message.startsWith("server unavailable") ? message : `server unavailable: ${message}`;
    banner.hidden = false;
    if (!state.healthTimer) state.healthTimer = setInterval(pollHealth, HEALTH_POLL_MS);
  }

  function hideBanner() {
    $("banner").hidden = true;
    if (state.healthTimer) clearInterval(state.healthTimer);
    state.healthTimer = null;
  }

  async function pollHealth() {
    try {
      const resp = await fetch("/api/health", { cache: "no-store" });
      if (resp.ok) hideBanner();
    } catch (_err) { /* the app itself is down: keep the banner */ }
  }

  // ---------------------------------------------------------------- session rows (CSV)
  function sessionRows() {
    try {
      return JSON.parse(sessionStorage.getItem(SESSION_KEY) || "{}");
    } catch (_err) {
      return {};
    }
  }

  function saveSessionRow(card) {
    const r = card.result;
    if (!r || !r.ok) return;
    const rows = sessionRows();
    rows[r.sha256] = {
      file: r.file, sha256: r.sha256, verdict: r.verdict, probability: r.probability, threshold: r.threshold,
      model: r.model, version: r.version, decision: card.decision || "", reviewer: card.decidedBy || "",
    };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(rows));
  }

  function csvField(value) {
    let text = String(value ?? "");
    if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;  // never a formula in a spreadsheet
    return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  function sessionCsv() {
    const header = ["file", "sha256", "verdict", "probability", "threshold", "model", "version", "decision", "reviewer"];
    const lines = [header.join(",")];
    for (const row of Object.values(sessionRows())) lines.push(header.map((k) => csvField(row[k])).join(","));
    return `${lines.join("\r\n")}\r\n`;
  }

  function exportCsv() {
    const blob = new Blob([sessionCsv()], { type: "text/csv" });
    const link = el("a");
    link.href = URL.createObjectURL(blob);
    link.download = `review-session-${new Date().toISOString().slice(0, 19).replace(/:/g, "")}.csv`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }

  // ---------------------------------------------------------------- cards
  function makeCard(file) {
    const card = { file, result: null, decision: null, decidedBy: null, saving: null, heatOn: false };
    const node = el("article", "card");
    node.tabIndex = -1;
    node.dataset.state = "checking";
    const photo = el("div", "photo");
    if (file.type.startsWith("image/")) {
      const thumb = el("img", "thumb");
      thumb.alt = file.name;
      thumb.src = URL.createObjectURL(file);
      thumb.onerror = () => thumb.replaceWith(el("div", "placeholder", "no preview"));
      photo.appendChild(thumb);
    } else {
      photo.appendChild(el("div", "placeholder", "no preview"));
    }
    const heat = el("img", "heat");
    heat.alt = "heat-map";
    heat.hidden = true;
    photo.appendChild(heat);
    node.appendChild(photo);
    node.appendChild(el("div", "name", file.webkitRelativePath || file.name));
    const verdict = el("div", "verdict", "checking…");
    const prob = el("div", "prob");
    const message = el("div", "note");
    const toggleLabel = el("label", "heat-toggle");
    const toggle = el("input");
    toggle.type = "checkbox";
    toggleLabel.append(toggle, " heat-map");
    toggleLabel.hidden = true;
    const actions = el("div", "actions");
    const accept = el("button", "accept", "accept (a)");
    const reject = el("button", "reject", "reject (r)");
    const saved = el("span", "saved");
    for (const b of [accept, reject]) b.type = "button";
    actions.append(accept, reject, saved);
    actions.hidden = true;
    node.append(verdict, prob, message, toggleLabel, actions);
    Object.assign(card, { node, heat, verdict, prob, message, toggle, toggleLabel, actions, accept, reject, saved });
    accept.addEventListener("click", () => decide(card, "accept"));
    reject.addEventListener("click", () => decide(card, "reject"));
    toggle.addEventListener("change", () => setHeat(card, toggle.checked));
    node.addEventListener("click", () => select(state.cards.indexOf(card)));
    $("cards").appendChild(node);
    state.cards.push(card);
    return card;
  }

  function showResult(card, result) {
    card.result = result;
    card.node.dataset.state = result.ok ? "checked" : "error";
    card.message.className = "note";
    card.message.textContent = "";
    if (!result.ok) {
      card.verdict.textContent = result.unavailable ? "not checked" : "bad file";
      card.verdict.className = "verdict";
      card.message.className = "error";
      card.message.textContent = result.error;
      if (result.unavailable) {
        const retry = el("button", "retry", "retry");
        retry.type = "button";
        retry.addEventListener("click", () => { retry.remove(); checkCards([card]); });
        card.message.appendChild(document.createTextNode(" "));
        card.message.appendChild(retry);
      }
      render();
      return;
    }
    card.verdict.textContent = result.verdict;
    card.verdict.className = `verdict ${result.verdict}`;
    card.prob.textContent = `p = ${result.probability.toFixed(3)} (threshold ${result.threshold.toFixed(3)})`;
    card.prob.title = `model ${result.model} version ${result.version}`;
    card.actions.hidden = false;
    card.toggleLabel.hidden = !result.heatmap;
    if (result.heatmap_note) card.message.textContent = result.heatmap_note;
    saveSessionRow(card);
    if (result.heatmap && $("heatmaps-all").checked) setHeat(card, true);
    render();
  }

  function setHeat(card, on) {
    if (!card.result || !card.result.heatmap) return;
    card.heatOn = on;
    card.toggle.checked = on;
    if (on && !card.heat.getAttribute("src")) {
      const width = Math.max(16, Math.round(card.node.querySelector(".photo").clientWidth * (window.devicePixelRatio || 1)));
      card.heat.src = `${card.result.heatmap}?w=${width}`;
    }
    card.heat.hidden = !on;
  }

  // ---------------------------------------------------------------- uploads
  function chunks(cards) {
    const maxBytes = state.limits.max_request_bytes - 65536;
    const perRequest = Math.min(CHUNK_FILES, state.limits.max_files);
    const out = [];
    let current = [];
    let bytes = 0;
    for (const card of cards) {
      const size = card.file.size;
      if (current.length && (current.length >= perRequest || bytes + size > maxBytes)) {
        out.push(current);
        current = [];
        bytes = 0;
      }
      current.push(card);
      bytes += size;
    }
    if (current.length) out.push(current);
    return out;
  }

  async function sendChunk(group) {
    const form = new FormData();
    for (const card of group) form.append("files", card.file, card.file.webkitRelativePath || card.file.name);
    let resp;
    try {
      resp = await fetch("/api/check", { method: "POST", body: form });
    } catch (_err) {
      const error = "server unavailable: the review app does not answer";
      showBanner(error);
      for (const card of group) showResult(card, { ok: false, unavailable: true, error: `${card.file.name}: ${error}` });
      return;
    }
    const body = await readJson(resp);
    if (Array.isArray(body.results) && body.results.length === group.length) {
      if (resp.status === 503) showBanner(body.error); else hideBanner();
      body.results.forEach((result, i) => showResult(group[i], result));
      return;
    }
    if (resp.status === 503) showBanner(body.error || "server unavailable");
    for (const card of group) {
      showResult(card, { ok: false, unavailable: resp.status === 503, error: `${card.file.name}: ${body.error}` });
    }
  }

  async function checkCards(cards) {
    const tooLarge = cards.filter((c) => c.file.size > state.limits.max_request_bytes - 65536);
    for (const card of tooLarge) {
      showResult(card, {
        ok: false,
        error: `${card.file.name}: too large (${mib(card.file.size)}); at most ${mib(state.limits.max_file_bytes)} per photo`,
      });
    }
    const queue = chunks(cards.filter((c) => !tooLarge.includes(c)));
    for (const card of cards) if (!tooLarge.includes(card)) {
      card.node.dataset.state = "checking";
      card.verdict.textContent = "checking…";
      card.message.textContent = "";
    }
    const workers = Array.from({ length: PARALLEL_UPLOADS }, async () => {
      while (queue.length) await sendChunk(queue.shift());
    });
    await Promise.all(workers);
  }

  function addFiles(fileList) {
    const files = Array.from(fileList || []).filter((f) => !f.name.startsWith("."));
    if (!files.length) return;
    const cards = files.map(makeCard);
    if (state.selected < 0) select(state.cards.indexOf(cards[0]));
    render();
    checkCards(cards);
  }

  // ---------------------------------------------------------------- decisions
  async function decide(card, decision) {
    if (!card.result || !card.result.ok) return;
    const name = reviewer();
    if (!name) {
      notice("Type your name in the Reviewer box first; it is sent with each decision.");
      $("reviewer").focus();
      return;
    }
    if (card.saving === decision || (card.decision === decision && card.decidedBy === name)) return;
    card.saving = decision;
    card.saved.className = "saved";
    card.saved.textContent = "saving…";
    try {
      const resp = await fetch("/api/decisions", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sha256: card.result.sha256, decision, reviewer: name }),
      });
      const body = await readJson(resp);
      if (!resp.ok || !body.saved) throw new Error(body.error || `HTTP ${resp.status}`);
      card.decision = body.decision;
      card.decidedBy = body.reviewer;
      card.node.dataset.decision = body.decision;
      card.accept.classList.toggle("chosen", body.decision === "accept");
      card.reject.classList.toggle("chosen", body.decision === "reject");
      card.saved.textContent = `saved: ${body.decision === "reject" ? "rejected" : "accepted"}` +
        `${body.overturned ? " (overturns the model)" : ""} by ${body.reviewer}`;
      saveSessionRow(card);
    } catch (err) {
      card.saved.className = "saved failed";
      card.saved.textContent = `not saved: ${err.message}`;
    } finally {
      card.saving = null;
      render();
    }
  }

  // ---------------------------------------------------------------- filter, selection, keys
  function isRejected(card) {
    if (!card.result || !card.result.ok) return false;
    return card.decision ? card.decision === "reject" : card.result.verdict === "watermark";
  }

  function render() {
    const only = $("rejected-only").checked;
    for (const card of state.cards) card.node.hidden = only && !isRejected(card);
    const checked = state.cards.filter((c) => c.result && c.result.ok);
    const marked = checked.filter((c) => c.result.verdict === "watermark").length;
    const decided = checked.filter((c) => c.decision).length;
    $("counts").textContent = `${checked.length} checked, ${marked} watermark, ${decided} decided`;
  }

  function select(index) {
    if (index < 0 || index >= state.cards.length) return;
    if (state.selected >= 0 && state.cards[state.selected]) state.cards[state.selected].node.classList.remove("selected");
    state.selected = index;
    const node = state.cards[index].node;
    node.classList.add("selected");
    node.focus({ preventScroll: true });
    node.scrollIntoView({ block: "nearest" });
  }

  function move(step) {
    const visible = state.cards.map((c, i) => [c, i]).filter(([c]) => !c.node.hidden).map(([, i]) => i);
    if (!visible.length) return;
    const at = visible.indexOf(state.selected);
    const next = at < 0 ? visible[0] : visible[Math.min(visible.length - 1, Math.max(0, at + step))];
    select(next);
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest && event.target.closest("input, textarea, select")) return;
    const card = state.cards[state.selected];
    const actions = {
      j: () => move(1),
      k: () => move(-1),
      a: () => card && decide(card, "accept"),
      r: () => card && decide(card, "reject"),
      h: () => card && setHeat(card, !card.heatOn),
    };
    const action = actions[event.key.toLowerCase()];
    if (action) {
      event.preventDefault();
      action();
    }
  }

  // ---------------------------------------------------------------- start
  function wireDrop() {
    const drop = $("drop");
    const over = (on) => (event) => { event.preventDefault(); drop.classList.toggle("over", on); };
    drop.addEventListener("dragover", over(true));
    drop.addEventListener("dragenter", over(true));
    drop.addEventListener("dragleave", over(false));
    drop.addEventListener("drop", async (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      addFiles(await droppedFiles(event.dataTransfer));
    });
  }

  async function droppedFiles(transfer) {
    const entries = Array.from(transfer.items || []).map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    if (!entries.some((e) => e.isDirectory)) return Array.from(transfer.files);
    const files = [];
    async function walk(entry) {
      if (entry.isFile) {
        files.push(await new Promise((ok, fail) => entry.file(ok, fail)));
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        for (;;) {
          const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
          if (!batch.length) break;
          for (const child of batch) await walk(child);
        }
      }
    }
    for (const entry of entries) await walk(entry);
    return files;
  }

  async function start() {
    const resp = await fetch("/api/config");
    state.limits = await resp.json();
    $("limits").textContent = `${state.limits.allowed}; at most ${mib(state.limits.max_file_bytes)} per photo ` +
      `and ${state.limits.max_files} photos per upload (larger selections are sent in parts).`;
    $("reviewer").value = localStorage.getItem("review-reviewer") || "";
    $("reviewer").addEventListener("input", () => {
      localStorage.setItem("review-reviewer", reviewer());
      if (reviewer()) notice("");
    });
    $("pick-files").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
    $("pick-folder").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
    $("rejected-only").addEventListener("change", render);
    $("heatmaps-all").addEventListener("change", (e) => state.cards.forEach((c) => setHeat(c, e.target.checked)));
    $("export-csv").addEventListener("click", exportCsv);
    document.addEventListener("keydown", onKey);
    wireDrop();
    render();
    document.body.dataset.ready = "true";
  }

  window.review = { sessionCsv, state };
  document.addEventListener("DOMContentLoaded", start);
})();

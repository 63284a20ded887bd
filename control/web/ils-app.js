// Shared UI pieces of the ILS web app pages (studio.html, producer.html, viewer.html), built on
// ils-client.js. Plain ES module, no build step. Each page keeps its state on `window.ilsPage`
// so the browser test (tests/browser/ils_session.mjs) can read it.

import { IlsClient, pageToken } from "./ils-client.js";

/** @param {string} id */
export const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

/**
 * Creates an element: el("li", {class: "x", onclick: fn}, "text", child).
 * @param {string} tag
 * @param {Record<string, any>} [attrs]
 * @param {...(Node|string|null|undefined|false)} children
 */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    e.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

/** Shows an error line in #error (empty clears it). @param {any} e */
export function showError(e) {
  const box = document.getElementById("error");
  const msg = !e ? "" : e.reason ? `${e.code}: ${e.reason}` : String(e.message || e);
  if (box) box.textContent = msg;
  if (msg) console.warn("ils:", msg);
}

/**
 * Gets a token (`?token=` or the dev endpoint) and connects to this page's server.
 * @param {"host"|"producer"|"viewer"} role
 * @returns {Promise<{client:IlsClient, room:string, name:string}>}
 */
export async function join(role) {
  const { token, room, name } = await pageToken(role);
  const client = await IlsClient.connect("", token, { name });
  client.on("error", (e) => showError(e));
  client.on("reconnecting", ({ attempt }) => showError(`connection lost: reconnecting (attempt ${attempt})…`));
  client.on("reconnected", () => showError(""));
  // `removed` / `ended` come just before the server closes the socket: keep them on screen.
  let final = false;
  client.on("close", ({ code, reason }) => { if (!final) showError(`disconnected (${code}${reason ? ": " + reason : ""})`); });
  client.on("removed", ({ reason }) => { final = true; showError(`removed from the session${reason ? ": " + reason : ""}`); });
  client.on("ended", ({ reason }) => { final = true; showError(`the session ended${reason ? ": " + reason : ""}`); });
  return { client, room, name };
}

/**
 * Runs one app page: [`join`]s as `role` (the page's `client`, `#room` shows the room), runs
 * `setup({client, room, name})` (the page's controls and panels), then subscribes with `slots`
 * (`{videoSlots, audioSlots}`) and sets `page.ready`. A failure is shown (#error) and kept in
 * `page.failed`. `page` becomes `window.ilsPage`, which the browser test reads.
 * @param {Record<string, any>} page
 * @param {"host"|"producer"|"viewer"} role
 * @param {(j: {client:IlsClient, room:string, name:string}) => Promise<void>|void} setup
 * @param {{videoSlots:number, audioSlots:number}} slots
 */
export async function runPage(page, role, setup, slots) {
  window.ilsPage = page;
  try {
    const joined = await join(role);
    page.client = joined.client;
    // A server-initiated renegotiation replaces the connections: keep the page's handles current.
    joined.client.on("renegotiated", (/** @type {any} */ r) => {
      if (r.subscription) page.sub = r.subscription;
      if (r.publication) page.pub = r.publication;
    });
    $("room").textContent = joined.room;
    await setup(joined);
    page.sub = await joined.client.subscribe(slots);
    page.ready = true;
  } catch (e) {
    showError(e);
    page.failed = String(e && e.message ? e.message : e);
  }
}

/** Display name of a participant id (known participants only). @param {IlsClient} c @param {string} id */
export function nameOf(c, id) {
  const p = c.participants.get(String(id));
  return p ? p.name || String(id) : String(id);
}

/**
 * Slot size for a tile of `px` device pixels wide (the simulcast layers are 1/4, 1/2 and full
 * 1280-pixel width).
 * @param {number} px
 * @returns {"thumbnail"|"medium"|"full"}
 */
export function sizeForWidth(px) {
  return px > 640 ? "full" : px > 320 ? "medium" : "thumbnail";
}

/** Wait after a resize or re-layout before asking for new slot sizes. */
export const SLOT_SIZE_DEBOUNCE_MS = 250;

/**
 * Keeps a grid of <video> tiles, one per participant mapped into the subscription's slots.
 * Tiles are reused across `slots` events, so unchanged participants keep playing.
 * Applies a pushed layout ({mode:"grid"} or {mode:"spotlight", participant}). With `autoSize`
 * (default) it asks the server for each video slot's size from its tile's rendered width
 * (`slot_size`, only when it changes), so the server forwards the simulcast layer that fits.
 * @param {IlsClient} client
 * @param {HTMLElement} grid
 * @param {{autoSize?:boolean}} [opts]
 */
export function videoGrid(client, grid, opts = {}) {
  const autoSize = opts.autoSize !== false;
  /** @type {any} */
  let sizeTimer = null;
  function scheduleSizes() {
    if (!autoSize) return;
    clearTimeout(sizeTimer);
    sizeTimer = setTimeout(sendSizes, SLOT_SIZE_DEBOUNCE_MS);
  }
  function sendSizes() {
    const sub = client.subscription;
    if (!sub || client.closed) return;
    for (const [id, t] of tiles) {
      const want = sizeForWidth(t.fig.clientWidth * (globalThis.devicePixelRatio || 1));
      for (const s of sub.slotsOf(id)) {
        if (s.kind !== "video" || s.size === want) continue;
        client.setSlotSize(s.slot, want).catch(showError);
      }
    }
  }
  if (autoSize && typeof ResizeObserver === "function") new ResizeObserver(scheduleSizes).observe(grid);
  /** @type {Map<string, {fig:HTMLElement, video:HTMLVideoElement, stream:MediaStream|null}>} */
  const tiles = new Map();
  function render() {
    const sub = client.subscription;
    const streams = sub ? sub.streams : new Map();
    for (const [id, t] of tiles) {
      if (!streams.has(id)) {
        t.fig.remove();
        tiles.delete(id);
      }
    }
    for (const [id, stream] of streams) {
      if (!stream.getVideoTracks().length && !stream.getAudioTracks().length) continue;
      if (client.you && String(client.you.id) === id) continue; // own camera: the preview shows it
      let t = tiles.get(id);
      if (!t) {
        const video = /** @type {HTMLVideoElement} */ (el("video", { autoplay: true, playsinline: true }));
        const fig = el("figure", { class: "tile", dataset: { participant: id } }, video, el("figcaption", {}, nameOf(client, id)));
        grid.append(fig);
        t = { fig, video, stream: null };
        tiles.set(id, t);
      }
      if (t.stream !== stream) {
        t.stream = stream;
        t.video.srcObject = stream;
        t.video.play().catch(() => { t.video.muted = true; t.video.play().catch(() => {}); });
      }
      const cap = t.fig.querySelector("figcaption");
      if (cap) cap.textContent = nameOf(client, id);
    }
    applyLayout(client.layout);
    scheduleSizes();
  }
  /** @param {any} layout */
  function applyLayout(layout) {
    const mode = layout && layout.mode === "spotlight" ? "spotlight" : "grid";
    grid.classList.toggle("layout-spotlight", mode === "spotlight");
    for (const [id, t] of tiles) t.fig.classList.toggle("spotlight", mode === "spotlight" && String(layout.participant) === id);
  }
  client.on("slots", render);
  client.on("participant", render);
  client.on("layout", render);
  render();
  return { render, tiles };
}

/**
 * Chat panel: history, live messages, hidden messages removed, a send form.
 * With `moderate`, each message gets Hide and "To hosts" buttons (producers).
 * @param {IlsClient} client
 * @param {HTMLElement} box   a .chat section with an <ol> and a <form><input></form>
 * @param {{moderate?:boolean}} [opts]
 */
export function chatPanel(client, box, opts = {}) {
  const list = /** @type {HTMLOListElement} */ (box.querySelector("ol"));
  const form = /** @type {HTMLFormElement} */ (box.querySelector("form"));
  const input = /** @type {HTMLInputElement} */ (form.querySelector("input"));
  /** @param {any} m */
  function add(m) {
    if (!m) return;
    const known = list.querySelector(`li[data-msg="${CSS.escape(String(m.id))}"]`);
    if (known) {
      known.classList.toggle("featured", !!m.featured);
      return;
    }
    const li = el("li", { class: m.featured ? "featured" : "", dataset: { msg: String(m.id) } },
      el("span", { class: `from ${m.from && m.from.role}` }, (m.from && (m.from.name || m.from.id)) || "?"),
      el("span", { class: "text" }, m.text));
    if (opts.moderate) {
      li.append(
        el("button", { class: "hide", title: "hide for everyone", onclick: () => client.hideChat(m.id).catch(showError) }, "hide"),
        el("button", { class: "feature", title: "show to hosts", onclick: () => { const on = !li.classList.contains("featured"); client.featureChat(m.id, on).then(() => li.classList.toggle("featured", on)).catch(showError); } }, "to hosts"));
    }
    list.append(li);
    list.scrollTop = list.scrollHeight;
  }
  client.chatLog.forEach(add);
  client.on("chat", add);
  client.on("chat_hidden", (id) => {
    const li = list.querySelector(`li[data-msg="${CSS.escape(String(id))}"]`);
    if (li) li.remove();
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    client.chat(text).catch(showError);
  });
}

/**
 * Polls: each poll with its options, counts as bars, vote buttons (`vote`) and a Close button (`manage`).
 * @param {IlsClient} client
 * @param {HTMLElement} box
 * @param {{vote?:boolean, manage?:boolean}} [opts]
 */
export function pollPanel(client, box, opts = {}) {
  /** @type {Set<string>} */
  const voted = new Set();
  function render() {
    box.replaceChildren();
    if (!client.polls.size) box.append(el("div", { class: "empty" }, "no polls"));
    for (const p of client.polls.values()) {
      const total = (p.counts || []).reduce((a, b) => a + b, 0) || 1;
      const div = el("div", { class: "poll", dataset: { poll: String(p.id) } }, el("div", { class: "q" }, `${p.question}${p.closed ? " (closed)" : ""}`));
      (p.options || []).forEach((o, i) => {
        const n = (p.counts || [])[i] || 0;
        div.append(el("div", { class: "opt" },
          opts.vote && !p.closed && !voted.has(String(p.id))
            ? el("button", { class: "vote", dataset: { option: String(i) }, onclick: () => { voted.add(String(p.id)); client.vote(p.id, i).catch(showError); render(); } }, o)
            : el("span", {}, o),
          el("span", { class: "count" }, String(n)),
          el("div", { class: "bar", style: `width:${Math.round((100 * n) / total)}px` })));
      });
      if (opts.manage && !p.closed) div.append(el("button", { class: "close-poll", onclick: () => client.closePoll(p.id).catch(showError) }, "close poll"));
      box.append(div);
    }
  }
  client.on("poll", render);
  render();
  return { render };
}

/**
 * Shows the latest aggregated reaction window ("👍 12  🎉 3") and keeps totals.
 * @param {IlsClient} client
 * @param {HTMLElement} out
 */
export function reactionCounter(client, out) {
  /** @type {Record<string, number>} */
  const totals = {};
  let windows = 0;
  client.on("reactions", ({ counts }) => {
    windows += 1;
    for (const [e, n] of Object.entries(counts)) totals[e] = (totals[e] || 0) + Number(n);
    out.textContent = Object.entries(counts).map(([e, n]) => `${e} ${n}`).join("  ");
    out.dataset.windows = String(windows);
  });
  return { totals, get windows() { return windows; } };
}

/** Fills a badge with the participant's place. @param {HTMLElement} badge @param {string} place */
export function placeBadge(badge, place) {
  const text = { stage: "LIVE on stage", green_room: "green room", audience: "audience", backstage: "backstage" }[place] || place || "?";
  badge.textContent = text;
  badge.classList.toggle("live", place === "stage");
  badge.classList.toggle("green", place === "green_room");
}

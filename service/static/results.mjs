// The result grid and the detail view. Cards are built with the DOM API (text only, never HTML from a response).

import { cardImage, clipFragment, clipOf, formatScore, formatValue, mediaPath, snippet, warningsById } from "./model.mjs";
import { drawBlob, drawEvidence } from "./images.mjs";

const META_IN_CARD = 6;
const liveUrls = new Set(); // object URLs of the clips (and posters) the grid plays: revoked when it is redrawn

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role") node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function scoreList(hit, reranked) {
  const dl = el("dl", { class: "scores" });
  const add = (name, value) => dl.append(el("div", {}, el("dt", { textContent: name }), el("dd", { textContent: formatScore(value) })));
  add("retrieval", hit.retrieval_score);
  if (reranked || hit.rerank_score !== null) add("rerank", hit.rerank_score);
  return dl;
}

function metaList(metadata, limit = Infinity) {
  const dl = el("dl", { class: "meta" });
  const entries = Object.entries(metadata ?? {});
  for (const [k, v] of entries.slice(0, limit)) {
    dl.append(el("div", {}, el("dt", { textContent: k }), el("dd", { textContent: formatValue(v) })));
  }
  if (entries.length > limit) dl.append(el("div", { class: "more-meta" }, el("dd", { textContent: `+${entries.length - limit} more` })));
  return dl;
}

function evidenceList(evidence) {
  const items = (Array.isArray(evidence) ? evidence : []).filter((e) => typeof e?.text === "string" && e.text);
  if (!items.length) return null;
  return el(
    "ul",
    { class: "evidence", "aria-label": "Where the query matched" },
    ...items.map((e) => el("li", {}, el("span", { class: "source", textContent: e.source === "ocr" ? "in image" : "in text" }), " ", el("mark", { textContent: e.text }))),
  );
}

function warningList(list) {
  if (!list?.length) return null;
  return el("ul", { class: "card-warnings" }, ...list.map((w) => el("li", { textContent: `${w.code}: ${w.message}` })));
}

/**
 * Render a /search response into `grid` (replacing what was there). `ctx` gives `api` (for media),
 * `open(hit, opener)` and `moreLikeThis(hit)`. Returns the cards' image loads (settled when all are drawn).
 */
export function renderResults(grid, response, ctx) {
  const warnings = warningsById(response.warnings);
  const loads = [];
  liveUrls.forEach((url) => URL.revokeObjectURL(url));
  liveUrls.clear();
  const cards = response.hits.map((hit, rank) => {
    const title = el("button", { type: "button", class: "open", textContent: hit.id, "aria-haspopup": "dialog" });
    title.addEventListener("click", () => ctx.open(hit, title));
    const card = el("li", { class: "card", "data-id": hit.id });
    const path = cardImage(hit);
    if (path) {
      const canvas = el("canvas", { role: "img", "aria-label": `Image of ${hit.id}` });
      const frame = el("div", { class: "thumb" }, canvas);
      card.append(frame);
      loads.push(loadInto(ctx.api, path, canvas, frame, hit));
    } else if (hit.image) {
      card.append(el("p", { class: "hint external", textContent: `Image at ${snippet(hit.image, 80)} (not shown: another origin)` }));
    }
    const clip = clipOf(hit);
    if (clip) card.append(clipPlayer(hit, clip, ctx.api, card));
    card.append(
      el("h3", { class: "card-title" }, el("span", { class: "rank", textContent: `${rank + 1}.` }), " ", title),
      scoreList(hit, response.reranked),
    );
    if (hit.text) card.append(el("p", { class: "snippet", textContent: snippet(hit.text) }));
    if (Object.keys(hit.metadata ?? {}).length) card.append(metaList(hit.metadata, META_IN_CARD));
    const ev = evidenceList(hit.evidence);
    if (ev) card.append(ev);
    const wl = warningList(warnings[hit.id]);
    if (wl) card.append(wl);
    if (hit.image) {
      const more = el("button", { type: "button", class: "secondary more", textContent: "More like this", "aria-label": `More like this: ${hit.id}` });
      more.addEventListener("click", () => ctx.moreLikeThis(hit));
      card.append(more);
    }
    return card;
  });
  grid.replaceChildren(...cards);
  return Promise.allSettled(loads);
}

/**
 * A clip hit's player: its segment as text, and a button that fetches the stored clip (with the key, as images are:
 * a media element cannot send it) and plays it from the segment's start, the keyframe thumbnail as its poster.
 */
function clipPlayer(hit, clip, api, card) {
  const text = clip.span ? `Play ${clip.span}` : "Play";
  const play = el("button", { type: "button", class: "secondary play", textContent: text, "aria-label": `${text}, the ${clip.kind} of ${hit.id}` });
  const box = el("div", { class: "player", "data-kind": clip.kind }, clip.span ? el("p", { class: "span", textContent: `Segment ${clip.span}` }) : null, play);
  play.addEventListener("click", () => startClip(box, play, hit, clip, api, card));
  return box;
}

async function startClip(box, play, hit, clip, api, card) {
  play.disabled = true;
  box.querySelector(".hint")?.remove();
  try {
    const media = el(clip.kind, { controls: true, preload: "auto", "data-src": clip.path, "aria-label": `${clip.kind} of ${hit.id}` });
    const poster = clip.kind === "video" ? mediaPath(hit.thumbnail) : null;
    if (poster) media.poster = objectUrl(await api.blob(poster));
    media.src = objectUrl(await api.fetchBlob(clip.path)) + clipFragment(clip); // the fragment starts it at t0, stops at t1
    play.replaceWith(media);
    card.querySelector(".thumb")?.setAttribute("hidden", ""); // the player shows the thumbnail as its poster
    media.play().catch(() => {}); // a browser may refuse to start sound: the controls are there
  } catch (err) {
    play.disabled = false;
    box.append(el("p", { class: "hint", textContent: `The clip could not be played: ${err.message}` }));
  }
}

function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  liveUrls.add(url);
  return url;
}

/** Fetch a stored image, draw it, then its evidence boxes; a failure leaves a readable note instead. */
async function loadInto(api, path, canvas, frame, hit) {
  try {
    const size = await drawBlob(canvas, await api.blob(path));
    fitFrame(frame, size);
    frame.classList.add("loaded");
    // Boxes are in the original image's pixels: placed only when this canvas holds the original.
    if (path === mediaPath(hit.image)) drawEvidence(frame, hit.evidence, size);
  } catch (err) {
    frame.classList.add("failed");
    canvas.setAttribute("aria-label", `Image of ${hit.id} could not be shown: ${err.message}`);
    frame.append(el("span", { class: "hint", textContent: "image unavailable" }));
    throw err;
  }
}

/** Size the frame to the image's aspect ratio (CSS bounds its height), so % evidence boxes land on the image. */
function fitFrame(frame, size) {
  frame.style.setProperty("--ar", String(size.width / size.height));
}

/** The detail view of one hit: the full image with its evidence, scores, whole text, metadata, warnings. */
export class Detail {
  constructor(dialog, api, moreLikeThis) {
    this.dialog = dialog;
    this.api = api;
    this.hit = null;
    this.opener = null;
    const $ = (id) => dialog.querySelector(`#${id}`);
    this.parts = {
      title: $("detail-title"),
      figure: $("detail-figure"),
      canvas: $("detail-canvas"),
      caption: $("detail-caption"),
      scores: $("detail-scores"),
      text: $("detail-text"),
      source: $("detail-source"),
      sourceUrl: $("detail-source-url"),
      evidenceHeading: $("detail-evidence-heading"),
      evidence: $("detail-evidence"),
      meta: $("detail-meta"),
      warnings: $("detail-warnings"),
      more: $("detail-more"),
    };
    $("detail-close").addEventListener("click", () => dialog.close());
    this.parts.more.addEventListener("click", () => {
      const hit = this.hit;
      dialog.close();
      moreLikeThis(hit);
    });
    dialog.addEventListener("close", () => this.opener?.isConnected && this.opener.focus());
  }

  async open(hit, opener, reranked, warnings) {
    const p = this.parts;
    this.hit = hit;
    this.opener = opener;
    p.title.textContent = hit.id;
    p.scores.replaceWith((p.scores = Object.assign(scoreList(hit, reranked), { id: "detail-scores" })));
    p.text.textContent = hit.text ?? "";
    p.text.hidden = !hit.text;
    p.sourceUrl.textContent = hit.source ?? ""; // shown as text: the page never loads another origin
    p.source.hidden = !hit.source;
    const ev = evidenceList(hit.evidence);
    p.evidence.replaceChildren(...(ev ? ev.children : []));
    p.evidenceHeading.hidden = !ev;
    p.meta.replaceWith((p.meta = Object.assign(metaList(hit.metadata), { id: "detail-meta" })));
    p.warnings.replaceChildren(...(warningList(warnings)?.children ?? []));
    p.warnings.hidden = !warnings?.length;
    p.more.hidden = !hit.image;
    const path = mediaPath(hit.image);
    p.figure.hidden = !path;
    p.canvas.getContext("2d").clearRect(0, 0, p.canvas.width, p.canvas.height);
    p.canvas.parentElement.querySelectorAll(".evidence-box").forEach((b) => b.remove());
    p.canvas.setAttribute("aria-label", `Full image of ${hit.id}`);
    p.caption.textContent = "";
    this.dialog.showModal();
    if (path) {
      try {
        const size = await drawBlob(p.canvas, await this.api.blob(path));
        if (this.hit !== hit) return;
        fitFrame(p.canvas.parentElement, size);
        p.caption.textContent = `${size.width} × ${size.height} px`;
        drawEvidence(p.canvas.parentElement, hit.evidence, size);
      } catch (err) {
        p.caption.textContent = `The image could not be shown: ${err.message}`;
      }
    }
  }
}

// Pure logic of the search page (no DOM): request building, filters, errors, media paths, evidence geometry.
// Unit-tested with `node --test` (tests/page_js/); the other modules do the DOM work around it.

export const MODES = ["hybrid", "vector", "keyword"];
export const OPERATORS = [
  { op: "eq", label: "=" },
  { op: "$ne", label: "≠" },
  { op: "$in", label: "in" },
  { op: "$gt", label: ">" },
  { op: "$gte", label: "≥" },
  { op: "$lt", label: "<" },
  { op: "$lte", label: "≤" },
];
export const MAX_TOP_K = 1000;
export const MIN_CANDIDATES = 50;
const RANGE = new Set(["$gt", "$gte", "$lt", "$lte"]);
const KEY_RE = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
const NUMBER_RE = /^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

/** A problem with what the user typed, naming the form field at fault (its element id). */
export class InputError extends Error {
  constructor(message, field) {
    super(message);
    this.name = "InputError";
    this.field = field;
  }
}

/** A filter value as typed: true/false, a number, "quoted" (always a string), else the text itself. */
export function parseValue(raw) {
  const s = String(raw).trim();
  if (s === "true" || s === "false") return s === "true";
  if (NUMBER_RE.test(s)) return Number(s);
  if (s.length >= 2 && s.startsWith('"') && s.endsWith('"')) return s.slice(1, -1);
  return s;
}

/**
 * The `filter` object of a search from the filter rows ({key, op, value}); null when no row is filled.
 * Rows on one key combine (a range: >= 2025 and < 2027); contradictions are refused naming the row.
 */
export function buildFilter(rows) {
  const filter = {};
  rows.forEach((row, i) => {
    const key = String(row.key ?? "").trim();
    const raw = String(row.value ?? "").trim();
    const where = `filter row ${i + 1}`;
    if (!key && !raw) return; // an empty row is ignored
    if (!KEY_RE.test(key)) {
      throw new InputError(`${where}: the key must be 1-64 letters, digits or '_' (not starting with a digit)`, `filter-key-${i}`);
    }
    if (!raw) throw new InputError(`${where}: enter a value for '${key}'`, `filter-value-${i}`);
    let value;
    if (row.op === "$in") {
      value = raw.split(",").map((v) => parseValue(v)).filter((v) => v !== "");
      if (!value.length) throw new InputError(`${where}: 'in' needs values separated by commas`, `filter-value-${i}`);
    } else {
      value = parseValue(raw);
      if (RANGE.has(row.op) && typeof value !== "number") {
        throw new InputError(`${where}: '${label(row.op)}' needs a number (got ${JSON.stringify(raw)})`, `filter-value-${i}`);
      }
    }
    const prev = filter[key];
    if (row.op === "eq") {
      if (prev !== undefined) throw new InputError(`${where}: '${key}' already has a condition`, `filter-key-${i}`);
      filter[key] = value;
      return;
    }
    if (prev !== undefined && (typeof prev !== "object" || Array.isArray(prev) || prev === null)) {
      throw new InputError(`${where}: '${key}' already has an '=' condition`, `filter-key-${i}`);
    }
    const ops = prev ?? {};
    if (row.op in ops) throw new InputError(`${where}: '${key}' already has a '${label(row.op)}' condition`, `filter-op-${i}`);
    ops[row.op] = value;
    filter[key] = ops;
  });
  return Object.keys(filter).length ? filter : null;
}

function label(op) {
  return OPERATORS.find((o) => o.op === op)?.label ?? op;
}

/**
 * The JSON body of POST /search from the form's state. `mode` is sent only when the user picked one, so a server
 * that does not know it (or its default) is not overridden.
 */
export function buildSearchRequest(state) {
  const text = String(state.text ?? "").trim();
  if (!text && !state.image) throw new InputError("Type a query, or paste, drop or choose an image.", "q");
  const topK = Number(state.topK);
  if (!Number.isInteger(topK) || topK < 1 || topK > MAX_TOP_K) {
    throw new InputError(`Results: a whole number from 1 to ${MAX_TOP_K}`, "top-k");
  }
  let query;
  if (state.image) query = text ? { text, image: state.image } : { image: state.image };
  else query = { text };
  const body = {
    collection: state.collection || "default",
    query,
    top_k: topK,
    candidates: Math.max(MIN_CANDIDATES, topK),
    rerank: state.rerank ? "auto" : false,
  };
  if (MODES.includes(state.mode)) body.mode = state.mode;
  const filter = buildFilter(state.filterRows ?? []);
  if (filter) body.filter = filter;
  return body;
}

/** A same-origin path for a stored image reference, or null when the page cannot load it (another origin). */
export function mediaPath(ref) {
  if (typeof ref !== "string" || !ref) return null;
  if (ref.startsWith("media://")) return "/media/" + encodeURIComponent(ref.slice("media://".length));
  if (ref.startsWith("/") && !ref.startsWith("//")) return ref;
  return null;
}

/**
 * The image to show in a result card: the hit's `thumbnail` when it has one, else the image itself. A hit with
 * evidence boxes shows its stored image instead: the boxes are in that image's pixels, and a thumbnail does not
 * say what size its original was.
 */
export function cardImage(hit) {
  const original = mediaPath(hit?.image);
  if (original && hasBoxes(hit)) return original;
  return mediaPath(hit?.thumbnail) ?? original;
}

/**
 * The clip a hit plays, or null: `{kind: "video"|"audio", path, t0, t1, span}`. `path` is only ever a clip Search
 * stores (a `media://` reference, served under /media/): a URL from anywhere else is never played. `t0`/`t1` are the
 * hit's segment (null when it has none); `span` says it as text ("0:20–0:30").
 */
export function clipOf(hit) {
  for (const kind of ["video", "audio"]) {
    const ref = hit?.[kind];
    if (typeof ref !== "string" || !ref.startsWith("media://")) continue;
    const [t0, t1] = [hit.t0, hit.t1].map((t) => (typeof t === "number" && Number.isFinite(t) && t >= 0 ? t : null));
    const timed = t0 !== null && t1 !== null && t1 > t0;
    return {
      kind,
      path: mediaPath(ref.split("?", 1)[0]),
      t0: timed ? t0 : null,
      t1: timed ? t1 : null,
      span: timed ? `${formatClock(t0)}–${formatClock(t1)}` : "",
    };
  }
  return null;
}

/** A media fragment that starts playback at the segment and stops at its end (`#t=20,30`), or "" without one. */
export function clipFragment(clip) {
  return clip?.t0 === null || clip?.t0 === undefined ? "" : `#t=${clip.t0},${clip.t1}`;
}

/** Seconds as a clock: 0:07, 1:05, 1:02:03 (whole seconds, rounded down). */
export function formatClock(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  const [h, m, sec] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
}

const STATUS_TEXT = {
  400: "Bad request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not found",
  408: "Timed out",
  409: "Conflict",
  413: "Too large",
  415: "Unsupported media type",
  422: "Unprocessable",
  429: "Too many requests",
  500: "Server error",
  503: "Unavailable",
  504: "Deadline exceeded",
};

/**
 * A readable error from an HTTP status and its body: the service's {"error", "code", "field"}, BentoML's
 * validation errors ({"detail": [{"loc", "msg"}]} or a JSON string of them), or plain text.
 */
export function describeError(status, body) {
  const title = `${status} ${STATUS_TEXT[status] ?? "Error"}`;
  let data = body;
  if (typeof data === "string") {
    try {
      data = JSON.parse(data);
    } catch {
      return { status, title, code: null, field: null, message: data.trim().slice(0, 500) || title };
    }
  }
  if (data && typeof data === "object" && !Array.isArray(data)) {
    if (typeof data.error === "string") {
      const nested = validationDetail(data.error);
      if (nested) return { status, title, code: data.code ?? "validation_error", ...nested };
      return { status, title, code: data.code ?? null, field: data.field ?? null, message: data.error };
    }
    const nested = validationDetail(data.detail);
    if (nested) return { status, title, code: "validation_error", ...nested };
  }
  const nested = validationDetail(data);
  if (nested) return { status, title, code: "validation_error", ...nested };
  return { status, title, code: null, field: null, message: title };
}

function validationDetail(detail) {
  let d = detail;
  if (typeof d === "string") {
    try {
      d = JSON.parse(d);
    } catch {
      return null;
    }
  }
  if (!Array.isArray(d) || !d.length || typeof d[0] !== "object" || d[0] === null) return null;
  const parts = d.map((e) => {
    const loc = Array.isArray(e.loc) ? e.loc.filter((p) => p !== "body").join(".") : "";
    return loc ? `${loc}: ${e.msg}` : String(e.msg);
  });
  const first = d[0];
  const field = Array.isArray(first.loc) ? first.loc.filter((p) => p !== "body").join(".") || null : null;
  return { field, message: parts.join("; ") };
}

/** A score for display (3 decimals), or an en dash when there is none. */
export function formatScore(value) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(3) : "–";
}

/** The first `max` characters of a text, on one line, with an ellipsis when cut. */
export function snippet(text, max = 220) {
  if (typeof text !== "string") return "";
  const flat = text.split(/\s+/).filter(Boolean).join(" ");
  return flat.length <= max ? flat : flat.slice(0, max - 1) + "…";
}

/** A metadata value for display. */
export function formatValue(value) {
  if (Array.isArray(value)) return value.map(formatValue).join(", ");
  if (value === null || value === undefined) return "–";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

/**
 * Evidence boxes as percentages of an image of natural size width x height (so they scale with it on screen).
 * Boxes are [x0, y0, x1, y1] in the image's pixels; out-of-range parts are clipped, empty or malformed ones dropped.
 */
export function evidenceBoxes(evidence, width, height) {
  if (!Array.isArray(evidence) || !(width > 0) || !(height > 0)) return [];
  const out = [];
  for (const ev of evidence) {
    const b = ev?.box;
    if (!Array.isArray(b) || b.length !== 4 || !b.every((v) => typeof v === "number" && Number.isFinite(v))) continue;
    const x0 = clamp(Math.min(b[0], b[2]), 0, width);
    const x1 = clamp(Math.max(b[0], b[2]), 0, width);
    const y0 = clamp(Math.min(b[1], b[3]), 0, height);
    const y1 = clamp(Math.max(b[1], b[3]), 0, height);
    if (x1 <= x0 || y1 <= y0) continue;
    out.push({
      text: typeof ev.text === "string" ? ev.text : "",
      left: (x0 / width) * 100,
      top: (y0 / height) * 100,
      width: ((x1 - x0) / width) * 100,
      height: ((y1 - y0) / height) * 100,
    });
  }
  return out;
}

/** Whether any evidence of a hit has a box (then the card needs the image's real size to place it). */
export function hasBoxes(hit) {
  return Array.isArray(hit?.evidence) && hit.evidence.some((e) => Array.isArray(e?.box));
}

function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

/** Response warnings grouped by document id: {id: [{code, message}]}; warnings without an id go under "". */
export function warningsById(warnings) {
  const out = {};
  for (const w of Array.isArray(warnings) ? warnings : []) {
    const id = typeof w?.id === "string" ? w.id : "";
    (out[id] ??= []).push({ code: w?.code ?? "warning", message: w?.message ?? "" });
  }
  return out;
}

export const IMAGE_EXTENSIONS = new Set([".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"]);
export const TEXT_EXTENSIONS = new Set([".txt", ".md"]);

/** What an ingested file becomes, as `mmsearch index` decides: "image", "text", or null (not ingested). */
export function fileKind(name) {
  const dot = String(name).lastIndexOf(".");
  const ext = dot >= 0 ? String(name).slice(dot).toLowerCase() : "";
  if (IMAGE_EXTENSIONS.has(ext)) return "image";
  if (TEXT_EXTENSIONS.has(ext)) return "text";
  return null;
}

/** Whether a dropped path is hidden (a segment starting with "."), as `mmsearch index` skips them. */
export function isHidden(path) {
  return String(path)
    .split("/")
    .some((part) => part.startsWith("."));
}

/** Lowercase hex of a digest (ArrayBuffer); ids are its first 32 characters, like `mmsearch index`. */
export function contentId(digest) {
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0"))
    .join("")
    .slice(0, 32);
}

/** Run `worker(item, index)` over `items` with at most `limit` at once; resolves when all have settled. */
export async function runPool(items, limit, worker) {
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await worker(items[i], i);
    }
  });
  await Promise.all(lanes);
}

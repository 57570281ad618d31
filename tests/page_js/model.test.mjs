// Unit tests of the page's pure logic (service/static/model.mjs), run by node's test runner:
//   node --test tests/page_js/          (tests/test_page_unit.py runs it under pytest)
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  buildFilter,
  buildSearchRequest,
  cardImage,
  clipFragment,
  clipOf,
  contentId,
  describeError,
  evidenceBoxes,
  fileKind,
  formatClock,
  formatScore,
  hasBoxes,
  InputError,
  isHidden,
  mediaPath,
  parseValue,
  runPool,
  snippet,
  warningsById,
} from "../../service/static/model.mjs";

test("parseValue: booleans, numbers, quoted strings, text", () => {
  assert.equal(parseValue("true"), true);
  assert.equal(parseValue(" false "), false);
  assert.equal(parseValue("2026"), 2026);
  assert.equal(parseValue("-1.5e3"), -1500);
  assert.equal(parseValue(".5"), 0.5);
  assert.equal(parseValue('"2026"'), "2026");
  assert.equal(parseValue("finance"), "finance");
  assert.equal(parseValue("12abc"), "12abc");
});

test("buildFilter: equality, operators, ranges on one key, empty rows ignored", () => {
  const rows = [
    { key: "team", op: "eq", value: "finance" },
    { key: "year", op: "$gte", value: "2025" },
    { key: "year", op: "$lt", value: "2027" },
    { key: "lang", op: "$in", value: "en, de" },
    { key: "draft", op: "$ne", value: "true" },
    { key: "", op: "eq", value: "" },
  ];
  assert.deepEqual(buildFilter(rows), {
    team: "finance",
    year: { $gte: 2025, $lt: 2027 },
    lang: { $in: ["en", "de"] },
    draft: { $ne: true },
  });
  assert.equal(buildFilter([{ key: "", op: "eq", value: "" }]), null);
  assert.equal(buildFilter([]), null);
});

test("buildFilter: refuses bad keys, missing values, non-numeric ranges and contradictions, naming the row", () => {
  const refuse = (rows, field, re) =>
    assert.throws(() => buildFilter(rows), (e) => e instanceof InputError && e.field === field && re.test(e.message));
  refuse([{ key: "1year", op: "eq", value: "1" }], "filter-key-0", /row 1: the key/);
  refuse([{ key: "a b", op: "eq", value: "1" }], "filter-key-0", /letters, digits/);
  refuse([{ key: "year", op: "eq", value: " " }], "filter-value-0", /enter a value/);
  refuse([{ key: "year", op: "$gt", value: "recent" }], "filter-value-0", /'>' needs a number/);
  refuse([{ key: "x", op: "$in", value: " , " }], "filter-value-0", /'in' needs values/);
  refuse(
    [
      { key: "year", op: "$gt", value: "1" },
      { key: "year", op: "eq", value: "2" },
    ],
    "filter-key-1",
    /row 2: 'year' already has a condition/,
  );
  refuse(
    [
      { key: "year", op: "eq", value: "2" },
      { key: "year", op: "$gt", value: "1" },
    ],
    "filter-key-1",
    /already has an '=' condition/,
  );
  refuse(
    [
      { key: "year", op: "$gt", value: "1" },
      { key: "year", op: "$gt", value: "2" },
    ],
    "filter-op-1",
    /already has a '>' condition/,
  );
});

test("buildSearchRequest: text, image, both; mode only when picked; rerank auto/false; candidates >= top_k", () => {
  const base = { collection: "shots", text: " revenue ", image: null, mode: "", rerank: true, topK: 12, filterRows: [] };
  assert.deepEqual(buildSearchRequest(base), {
    collection: "shots",
    query: { text: "revenue" },
    top_k: 12,
    candidates: 50,
    rerank: "auto",
  });
  const img = "data:image/png;base64,AAAA";
  assert.deepEqual(buildSearchRequest({ ...base, text: "", image: img }).query, { image: img });
  assert.deepEqual(buildSearchRequest({ ...base, image: img }).query, { text: "revenue", image: img });
  assert.equal(buildSearchRequest({ ...base, mode: "keyword" }).mode, "keyword");
  assert.equal("mode" in buildSearchRequest({ ...base, mode: "bogus" }), false);
  assert.equal(buildSearchRequest({ ...base, rerank: false }).rerank, false);
  assert.equal(buildSearchRequest({ ...base, topK: 200 }).candidates, 200);
  assert.deepEqual(buildSearchRequest({ ...base, filterRows: [{ key: "y", op: "$gt", value: "1" }] }).filter, { y: { $gt: 1 } });
  assert.equal(buildSearchRequest({ ...base, collection: "" }).collection, "default");
});

test("buildSearchRequest: refuses an empty query and a bad top_k, naming the field", () => {
  const base = { collection: "c", text: "x", image: null, mode: "", rerank: true, topK: 10, filterRows: [] };
  assert.throws(() => buildSearchRequest({ ...base, text: "  " }), (e) => e.field === "q");
  for (const topK of [0, 1001, 2.5, NaN]) {
    assert.throws(() => buildSearchRequest({ ...base, topK }), (e) => e.field === "top-k" && /1 to 1000/.test(e.message));
  }
});

test("mediaPath / cardImage: media refs and same-origin paths load, other origins do not; thumbnail unless boxes", () => {
  assert.equal(mediaPath("media://ab12.png"), "/media/ab12.png");
  assert.equal(mediaPath("/media/ab12.thumb.webp"), "/media/ab12.thumb.webp");
  assert.equal(mediaPath("//evil.example/x.png"), null);
  assert.equal(mediaPath("https://example.com/x.png"), null);
  assert.equal(mediaPath("data:image/png;base64,AA"), null);
  assert.equal(mediaPath(null), null);
  assert.equal(mediaPath("media://../../etc/passwd"), "/media/..%2F..%2Fetc%2Fpasswd");
  assert.equal(cardImage({ image: "media://a.png", thumbnail: "/media/a.thumb.webp" }), "/media/a.thumb.webp");
  assert.equal(cardImage({ image: "media://a.png" }), "/media/a.png");
  assert.equal(cardImage({ image: "https://x/a.png" }), null);
  assert.equal(cardImage({ image: "https://x/a.png", thumbnail: "/media/a.thumb.webp" }), "/media/a.thumb.webp");
  assert.equal(cardImage({ image: "media://a.png", thumbnail: "https://x/t.png" }), "/media/a.png");
  // Evidence boxes are in the original's pixels: such a hit shows the original, thumbnail or not.
  const boxed = [{ source: "ocr", text: "Total", box: [1, 2, 30, 12] }];
  assert.equal(cardImage({ image: "media://a.png", thumbnail: "/media/a.thumb.webp", evidence: boxed }), "/media/a.png");
  assert.equal(cardImage({ image: "media://a.png", evidence: [{ source: "ocr", text: "Total" }] }), "/media/a.png");
  assert.equal(
    cardImage({ image: "media://a.png", thumbnail: "/media/a.thumb.webp", evidence: [{ source: "text", text: "Total" }] }),
    "/media/a.thumb.webp",
  );
  assert.equal(cardImage({ image: "https://x/a.png", thumbnail: "/media/t.webp", evidence: boxed }), "/media/t.webp");
});

test("describeError: the service's error body, BentoML validation errors, plain text", () => {
  assert.deepEqual(describeError(422, '{"error": "top_k (100) must be <= candidates (50)", "code": "unprocessable", "field": "top_k"}'), {
    status: 422,
    title: "422 Unprocessable",
    code: "unprocessable",
    field: "top_k",
    message: "top_k (100) must be <= candidates (50)",
  });
  const v = describeError(400, { detail: [{ loc: ["body", "query"], msg: "Field required" }, { loc: ["body", "top_k"], msg: "too big" }] });
  assert.equal(v.field, "query");
  assert.equal(v.message, "query: Field required; top_k: too big");
  const nested = describeError(400, { error: JSON.stringify([{ loc: ["mode"], msg: "Extra inputs are not permitted" }]) });
  assert.equal(nested.field, "mode");
  assert.match(nested.message, /mode: Extra inputs/);
  const plain = describeError(502, "<html>Bad gateway</html>");
  assert.equal(plain.title, "502 Error");
  assert.equal(plain.message, "<html>Bad gateway</html>");
  assert.equal(describeError(500, "").message, "500 Server error");
});

test("evidenceBoxes: pixel boxes to percentages, clipped, malformed ones dropped", () => {
  const boxes = evidenceBoxes(
    [
      { source: "ocr", text: "Revenue", box: [100, 50, 300, 90] },
      { source: "ocr", text: "flipped", box: [300, 90, 100, 50] },
      { source: "ocr", text: "outside", box: [900, 700, 1200, 900] },
      { source: "ocr", text: "empty", box: [10, 10, 10, 40] },
      { source: "text", text: "no box" },
      { source: "ocr", text: "bad", box: [1, 2, "3", 4] },
    ],
    1000,
    800,
  );
  assert.deepEqual(boxes[0], { text: "Revenue", left: 10, top: 6.25, width: 20, height: 5 });
  assert.deepEqual(boxes[1], { ...boxes[0], text: "flipped" });
  assert.deepEqual(boxes[2], { text: "outside", left: 90, top: 87.5, width: 10, height: 12.5 });
  assert.equal(boxes.length, 3);
  assert.deepEqual(evidenceBoxes([{ box: [0, 0, 1, 1] }], 0, 10), []);
  assert.equal(hasBoxes({ evidence: [{ text: "a" }, { text: "b", box: [0, 0, 1, 1] }] }), true);
  assert.equal(hasBoxes({ evidence: [{ text: "a" }] }), false);
  assert.equal(hasBoxes({}), false);
});

test("formatting: scores, snippets, warnings by id", () => {
  assert.equal(formatScore(0.87654), "0.877");
  assert.equal(formatScore(null), "–");
  assert.equal(snippet("a  b\n c"), "a b c");
  assert.equal(snippet("x".repeat(300), 10), "xxxxxxxxx…");
  assert.deepEqual(warningsById([{ id: "d1", code: "media_missing", message: "m" }, { code: "c", message: "n" }]), {
    d1: [{ code: "media_missing", message: "m" }],
    "": [{ code: "c", message: "n" }],
  });
});

test("ingest helpers: file kinds like `mmsearch index`, hidden paths, content ids", () => {
  assert.equal(fileKind("shots/Login.PNG"), "image");
  assert.equal(fileKind("notes.md"), "text");
  assert.equal(fileKind("report.pdf"), null);
  assert.equal(fileKind("README"), null);
  assert.equal(isHidden("shots/.DS_Store"), true);
  assert.equal(isHidden(".git/config"), true);
  assert.equal(isHidden("shots/a.png"), false);
  const digest = new Uint8Array(32).map((_, i) => i * 7).buffer;
  assert.equal(contentId(digest), "00070e151c232a31383f464d545b6269");
});

test("runPool: every item once, at most `limit` at a time", async () => {
  let active = 0;
  let peak = 0;
  const seen = [];
  await runPool([1, 2, 3, 4, 5, 6, 7], 3, async (item) => {
    active += 1;
    peak = Math.max(peak, active);
    await new Promise((r) => setTimeout(r, 5));
    seen.push(item);
    active -= 1;
  });
  assert.deepEqual(seen.sort(), [1, 2, 3, 4, 5, 6, 7]);
  assert.equal(peak, 3);
});

test("formatClock: minutes and seconds, hours when there are any, whole seconds", () => {
  assert.equal(formatClock(0), "0:00");
  assert.equal(formatClock(7.9), "0:07");
  assert.equal(formatClock(65), "1:05");
  assert.equal(formatClock(3723), "1:02:03");
  assert.equal(formatClock(-3), "0:00");
  assert.equal(formatClock("x"), "0:00");
});

test("clipOf: a stored video or audio clip at its segment; never a URL from elsewhere", () => {
  const digest = "a".repeat(64);
  const video = clipOf({ video: `media://${digest}.webm`, t0: 20, t1: 30, thumbnail: "/media/x.thumb.jpeg" });
  assert.deepEqual(video, { kind: "video", path: `/media/${digest}.webm`, t0: 20, t1: 30, span: "0:20–0:30" });
  assert.equal(clipFragment(video), "#t=20,30");
  const audio = clipOf({ audio: `media://${digest}.ogg`, t0: 7.5, t1: 17.5 });
  assert.deepEqual([audio.kind, audio.path, audio.span, clipFragment(audio)], ["audio", `/media/${digest}.ogg`, "0:07–0:17", "#t=7.5,17.5"]);
  // A short clip (no segment): played from its start, no span.
  const whole = clipOf({ video: `media://${digest}.mp4`, t0: null, t1: null });
  assert.deepEqual([whole.t0, whole.span, clipFragment(whole)], [null, "", ""]);
  // A broken window is no window.
  assert.equal(clipOf({ video: `media://${digest}.mp4`, t0: 30, t1: 20 }).span, "");
  // Only clips Search stores are played: a URL, a data URI, another path or an image hit give no player.
  for (const ref of ["https://evil.example/x.mp4", "//evil.example/x.mp4", "data:video/mp4;base64,AAAA", "/search", "javascript:alert(1)"]) {
    assert.equal(clipOf({ video: ref, t0: 0, t1: 10 }), null, ref);
    assert.equal(clipOf({ audio: ref }), null, ref);
  }
  assert.equal(clipOf({ image: `media://${digest}.png` }), null);
  assert.equal(clipOf(null), null);
  // The reference's window suffix is not part of the path; the name is URL-encoded as images' are.
  assert.equal(clipOf({ video: `media://${digest}.mp4?t=1,2` }).path, `/media/${digest}.mp4`);
  assert.equal(clipOf({ video: "media://../../etc/passwd" }).path, "/media/..%2F..%2Fetc%2Fpasswd");
});

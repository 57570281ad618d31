// Ingest: files or whole folders dropped (or picked) onto a collection, one /upsert per file (a few at once),
// with progress and an error per file. Documents look like those of `mmsearch index`: id = the first 32 hex
// characters of the content's SHA-256, metadata {path, filename}.

import { contentId, fileKind, isHidden, runPool } from "./model.mjs";
import { toDataUri } from "./images.mjs";

const PARALLEL = 3;

/** Files of a drop, folders walked recursively: [{file, path}]. Call it inside the drop handler (entries expire). */
export function filesFromDrop(dataTransfer) {
  const entries = Array.from(dataTransfer.items ?? [])
    .filter((item) => item.kind === "file")
    .map((item) => item.webkitGetAsEntry?.())
    .filter(Boolean);
  if (!entries.length) return Promise.resolve(Array.from(dataTransfer.files ?? [], (file) => ({ file, path: file.name })));
  return Promise.all(entries.map((entry) => walk(entry))).then((lists) => lists.flat());
}

async function walk(entry) {
  const path = entry.fullPath.replace(/^\//, "");
  if (entry.isFile) return [{ file: await new Promise((ok, fail) => entry.file(ok, fail)), path }];
  const reader = entry.createReader();
  const children = [];
  for (;;) {
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail)); // at most ~100 per call
    if (!batch.length) break;
    children.push(...batch);
  }
  const lists = await Promise.all(children.map((child) => walk(child)));
  return lists.flat();
}

/** Files of a file input (a folder picker gives their path inside the folder). */
export function filesFromInput(input) {
  return Array.from(input.files ?? [], (file) => ({ file, path: file.webkitRelativePath || file.name }));
}

async function documentFor({ file, path }) {
  const kind = fileKind(path);
  const bytes = await file.arrayBuffer();
  const id = globalThis.crypto?.subtle ? contentId(await crypto.subtle.digest("SHA-256", bytes)) : path;
  const metadata = { path, filename: path.split("/").pop() };
  if (kind === "text") {
    const text = new TextDecoder().decode(bytes);
    if (!text.trim()) return null;
    return { id, text, metadata };
  }
  return { id, image: await toDataUri(file), metadata };
}

/**
 * Upsert `files` into `collection`. `report({done, total, added, skipped, errors})` is called after each file;
 * errors are [{path, message}]. Hidden files are skipped, other unsupported files are errors.
 */
export async function ingest(api, collection, files, report) {
  const visible = files.filter((f) => !isHidden(f.path));
  const state = { done: 0, total: visible.length, added: 0, skipped: files.length - visible.length, errors: [] };
  report(state);
  await runPool(visible, PARALLEL, async (entry) => {
    try {
      if (!fileKind(entry.path)) {
        throw new Error("not an image (png, jpg, webp, gif, bmp, tiff) or text (.txt, .md) file");
      }
      const doc = await documentFor(entry);
      if (doc === null) {
        state.skipped += 1;
      } else {
        await api.post("/upsert", { collection, documents: [doc] });
        state.added += 1;
      }
    } catch (err) {
      const where = err.title ? `${err.title}${err.code ? ` (${err.code})` : ""}: ` : "";
      state.errors.push({ path: entry.path, message: `${where}${err.message}` });
    }
    state.done += 1;
    report(state);
  });
  return state;
}

// The search page: wires the form, the result grid, the detail view, ingest and the API-key prompt together.

import { Api, ApiError } from "./api.mjs";
import { drawBlob, toDataUri } from "./images.mjs";
import { filesFromDrop, filesFromInput, ingest } from "./ingest.mjs";
import { buildSearchRequest, InputError, mediaPath, OPERATORS, warningsById } from "./model.mjs";
import { Detail, renderResults } from "./results.mjs";

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("search-form"),
  q: $("q"),
  imageFile: $("image-file"),
  imageDrop: $("image-drop"),
  preview: $("image-preview"),
  previewCanvas: $("image-preview-canvas"),
  previewName: $("image-preview-name"),
  imageClear: $("image-clear"),
  button: $("search-button"),
  collection: $("collection"),
  mode: $("mode"),
  topK: $("top-k"),
  rerank: $("rerank"),
  filterRows: $("filter-rows"),
  addFilter: $("add-filter"),
  error: $("error"),
  status: $("status"),
  warnings: $("warnings"),
  warningList: $("warning-list"),
  results: $("results"),
  grid: $("grid"),
  changeKey: $("change-key"),
  keyDialog: $("key-dialog"),
  keyForm: $("key-form"),
  keyInput: $("key-input"),
  keyError: $("key-error"),
  ingestDrop: $("ingest-drop"),
  ingestCollection: $("ingest-collection"),
  ingestFiles: $("ingest-files"),
  ingestFolder: $("ingest-folder"),
  ingestProgress: $("ingest-progress"),
  ingestBar: $("ingest-bar"),
  ingestStatus: $("ingest-status"),
  ingestErrors: $("ingest-errors"),
  collectionNames: $("collection-names"),
};

// ----------------------------------------------------------------------------------------------- API key
let keyPrompt = null; // one prompt at a time, shared by every request that got a 401

function askKey(reason) {
  keyPrompt ??= new Promise((resolve) => {
    ui.keyError.textContent = reason === "refused" ? "That key was refused. Check it and try again." : "";
    ui.keyInput.value = "";
    ui.keyInput.setAttribute("aria-invalid", String(reason === "refused"));
    const submit = async (event) => {
      event.preventDefault();
      const key = ui.keyInput.value.trim();
      if (!key) {
        ui.keyError.textContent = "Enter the API key.";
        ui.keyInput.setAttribute("aria-invalid", "true");
        return;
      }
      const res = await api.raw("/collections", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" }, key);
      if (res.status === 401) {
        ui.keyError.textContent = "That key was refused. Check it and try again.";
        ui.keyInput.setAttribute("aria-invalid", "true");
        ui.keyInput.select();
        return;
      }
      api.key = key;
      ui.keyForm.removeEventListener("submit", submit);
      ui.keyDialog.close();
      ui.changeKey.hidden = false;
      keyPrompt = null;
      resolve();
    };
    ui.keyForm.addEventListener("submit", submit);
    ui.keyDialog.showModal();
    ui.keyInput.focus();
  });
  return keyPrompt;
}

ui.keyDialog.addEventListener("cancel", (event) => event.preventDefault()); // nothing works without the key
ui.changeKey.addEventListener("click", async () => {
  await askKey("change");
  await loadCollections();
});

const api = new Api(askKey);

// ----------------------------------------------------------------------------------------------- messages
function showError(err) {
  ui.error.replaceChildren();
  if (!err) {
    ui.error.hidden = true;
    return;
  }
  const head = document.createElement("strong");
  const body = document.createElement("p");
  if (err instanceof ApiError) {
    head.textContent = `${err.title}${err.code ? ` · ${err.code}` : ""}`;
    body.textContent = err.message;
    ui.error.append(head, body);
    if (err.field) {
      const field = document.createElement("p");
      field.append("Field: ", Object.assign(document.createElement("code"), { textContent: err.field }));
      ui.error.append(field);
    }
  } else {
    head.textContent = err instanceof InputError ? "Check the form" : "Something went wrong";
    body.textContent = err.message;
    ui.error.append(head, body);
  }
  ui.error.hidden = false;
}

function markInvalid(fieldId) {
  ui.form.querySelectorAll("[aria-invalid=true]").forEach((node) => node.removeAttribute("aria-invalid"));
  const field = fieldId && $(fieldId);
  if (field) {
    field.setAttribute("aria-invalid", "true");
    field.focus();
  }
}

// ----------------------------------------------------------------------------------------------- image query
let imageQuery = null; // {value: data URI or http(s) URL, name}

async function setImageQuery(blob, name, value) {
  try {
    await drawBlob(ui.previewCanvas, blob);
    ui.previewCanvas.hidden = false;
  } catch {
    ui.previewCanvas.hidden = true; // not decodable here: the server will say why
  }
  imageQuery = { value: value ?? (await toDataUri(blob)), name };
  ui.previewName.textContent = name;
  ui.previewCanvas.setAttribute("aria-label", `Image query: ${name}`);
  ui.preview.hidden = false;
}

function clearImageQuery() {
  imageQuery = null;
  ui.imageFile.value = "";
  ui.preview.hidden = true;
}

ui.imageFile.addEventListener("change", () => {
  const file = ui.imageFile.files?.[0];
  if (file) setImageQuery(file, file.name);
});
ui.imageClear.addEventListener("click", () => {
  clearImageQuery();
  ui.imageFile.focus();
});
document.addEventListener("paste", (event) => {
  const file = Array.from(event.clipboardData?.files ?? []).find((f) => f.type.startsWith("image/"));
  if (!file) return; // pasting text goes where it was pasted
  event.preventDefault();
  setImageQuery(file, file.name || "pasted image");
});

function dropTarget(zone, onDrop) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    event.stopPropagation();
    zone.classList.remove("dragging");
    onDrop(event.dataTransfer);
  });
}

dropTarget(ui.form, (dt) => {
  const file = Array.from(dt.files ?? []).find((f) => f.type.startsWith("image/"));
  if (file) setImageQuery(file, file.name);
  else showError(new InputError("Drop an image file to search by image."));
});
// A file dropped anywhere else must not make the browser navigate away from the page.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

// ----------------------------------------------------------------------------------------------- filters
let filterSeq = 0;

function addFilterRow(key = "", op = "eq", value = "") {
  const n = filterSeq++;
  const li = document.createElement("li");
  li.className = "filter-row";
  const field = (labelText, control) => {
    const wrap = document.createElement("div");
    wrap.className = "field";
    const label = Object.assign(document.createElement("label"), { htmlFor: control.id, textContent: labelText });
    wrap.append(label, control);
    return wrap;
  };
  const keyInput = Object.assign(document.createElement("input"), { type: "text", id: `filter-key-${n}`, value: key, autocomplete: "off" });
  const opSelect = Object.assign(document.createElement("select"), { id: `filter-op-${n}` });
  for (const o of OPERATORS) opSelect.append(new Option(o.label, o.op, false, o.op === op));
  const valueInput = Object.assign(document.createElement("input"), { type: "text", id: `filter-value-${n}`, value, autocomplete: "off" });
  const remove = Object.assign(document.createElement("button"), { type: "button", className: "secondary", textContent: "Remove" });
  remove.setAttribute("aria-label", `Remove filter ${n + 1}`);
  remove.addEventListener("click", () => {
    const next = li.nextElementSibling ?? li.previousElementSibling;
    li.remove();
    (next?.querySelector("input") ?? ui.addFilter).focus();
  });
  li.append(field("Key", keyInput), field("Operator", opSelect), field("Value", valueInput), remove);
  ui.filterRows.append(li);
  return keyInput;
}

function filterRows() {
  return Array.from(ui.filterRows.children, (li) => {
    const [key, op, value] = li.querySelectorAll("input, select");
    return { key: key.value, op: op.value, value: value.value, ids: [key.id, op.id, value.id] };
  });
}

ui.addFilter.addEventListener("click", () => addFilterRow().focus());

// ----------------------------------------------------------------------------------------------- search
let inFlight = null;
let searches = 0; // finished searches (answered or refused), exposed as data-searches for tests and tools
const detail = new Detail($("detail"), api, (hit) => moreLikeThis(hit));

async function search() {
  let body;
  try {
    const rows = filterRows();
    body = buildSearchRequest({
      collection: ui.collection.value,
      text: ui.q.value,
      image: imageQuery?.value ?? null,
      mode: ui.mode.value,
      rerank: ui.rerank.checked,
      topK: Number(ui.topK.value),
      filterRows: rows,
    });
  } catch (err) {
    if (!(err instanceof InputError)) throw err;
    showError(err);
    markInvalid(realFieldId(err.field));
    return;
  }
  markInvalid(null);
  inFlight?.abort();
  const controller = (inFlight = new AbortController());
  ui.status.textContent = "Searching…";
  ui.form.setAttribute("aria-busy", "true");
  performance.clearMarks("mm:search-response");
  performance.clearMeasures("mm:render");
  performance.clearMarks("mm:images-drawn");
  try {
    const started = performance.now();
    const response = await api.post("/search", body, { signal: controller.signal });
    performance.mark("mm:search-response");
    showError(null);
    renderWarnings(response.warnings);
    const drawn = renderResults(ui.grid, response, {
      api,
      open: (hit, opener) => detail.open(hit, opener, response.reranked, warningsById(response.warnings)[hit.id]),
      moreLikeThis,
    });
    performance.measure("mm:render", "mm:search-response");
    const n = response.hits.length;
    const t = response.timings_ms;
    ui.status.textContent =
      `${n} result${n === 1 ? "" : "s"} · ${response.reranked ? "reranked" : "not reranked"} · ` +
      `${Math.round(performance.now() - started)} ms (server ${Math.round(t?.total ?? 0)} ms)` +
      (response.mode ? ` · ${response.mode}` : "");
    drawn.then(() => performance.mark("mm:images-drawn"));
    ui.results.dataset.state = n ? "results" : "empty";
    if (!n) ui.grid.replaceChildren(Object.assign(document.createElement("li"), { className: "empty", textContent: "No results." }));
  } catch (err) {
    if (err.name === "AbortError") return;
    ui.status.textContent = "";
    showError(err);
    if (err instanceof ApiError && err.field) markInvalid(fieldForApi(err.field));
  } finally {
    if (inFlight === controller) {
      inFlight = null;
      ui.form.removeAttribute("aria-busy");
      ui.results.dataset.searches = String(++searches);
    }
  }
}

/** A form control id from model.mjs's row-numbered ids (rows may have been removed and re-added). */
function realFieldId(field) {
  const m = /^filter-(key|op|value)-(\d+)$/.exec(field ?? "");
  if (!m) return field;
  const row = filterRows()[Number(m[2])];
  return row?.ids[["key", "op", "value"].indexOf(m[1])] ?? null;
}

function fieldForApi(field) {
  if (field.startsWith("query")) return imageQuery && field.includes("image") ? "image-file" : "q";
  if (field.startsWith("top_k")) return "top-k";
  if (field.startsWith("collection")) return "collection";
  if (field.startsWith("mode")) return "mode";
  return null;
}

function renderWarnings(warnings) {
  const list = Array.isArray(warnings) ? warnings : [];
  ui.warningList.replaceChildren(
    ...list.map((w) => Object.assign(document.createElement("li"), { textContent: `${w.id ? `${w.id}: ` : ""}${w.code}: ${w.message}` })),
  );
  ui.warnings.hidden = !list.length;
}

async function moreLikeThis(hit) {
  const path = mediaPath(hit.image);
  try {
    if (path) {
      const blob = await api.blob(path);
      await setImageQuery(blob, `like ${hit.id}`);
    } else {
      // An image stored by URL: the server fetches it under its media policy.
      imageQuery = { value: hit.image, name: `like ${hit.id}` };
      ui.previewName.textContent = imageQuery.name;
      ui.preview.hidden = false;
    }
  } catch (err) {
    showError(err);
    return;
  }
  ui.q.value = "";
  await search();
  ui.results.focus();
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  search();
});

// ----------------------------------------------------------------------------------------------- collections
async function loadCollections() {
  try {
    const { collections } = await api.post("/collections", {});
    const current = ui.collection.value;
    const names = collections.map((c) => c.name);
    if (!names.length) names.push("default"); // created by the first ingest
    ui.collection.replaceChildren(
      ...names.map((name) => {
        const info = collections.find((c) => c.name === name);
        return new Option(info ? `${name} (${info.count})` : name, name, false, name === current);
      }),
    );
    if (!names.includes(current)) ui.ingestCollection.value = ui.collection.value;
    ui.collectionNames.replaceChildren(...names.map((name) => new Option(name, name)));
  } catch (err) {
    showError(err);
  }
}

ui.collection.addEventListener("change", () => {
  ui.ingestCollection.value = ui.collection.value;
});

// ----------------------------------------------------------------------------------------------- ingest
let ingesting = false;

async function ingestFiles(files) {
  const collection = ui.ingestCollection.value.trim() || "default";
  if (!ui.ingestCollection.checkValidity()) {
    showError(new InputError("Collection names are 1-64 characters: a letter, then letters, digits or '_'."));
    markInvalid(null);
    ui.ingestCollection.setAttribute("aria-invalid", "true");
    ui.ingestCollection.focus();
    return;
  }
  ui.ingestCollection.removeAttribute("aria-invalid");
  if (ingesting) return;
  ingesting = true;
  ui.ingestProgress.hidden = false;
  ui.ingestErrors.replaceChildren();
  try {
    const final = await ingest(api, collection, files, (s) => {
      ui.ingestBar.max = Math.max(1, s.total);
      ui.ingestBar.value = s.done;
      ui.ingestStatus.textContent =
        `${s.done} of ${s.total} file${s.total === 1 ? "" : "s"} into ${collection}: ${s.added} added` +
        (s.skipped ? `, ${s.skipped} skipped` : "") +
        (s.errors.length ? `, ${s.errors.length} failed` : "") +
        (s.done === s.total ? ". Done." : "…");
      const shown = ui.ingestErrors.children.length;
      for (const e of s.errors.slice(shown)) {
        const li = document.createElement("li");
        li.append(Object.assign(document.createElement("code"), { textContent: e.path }), ` ${e.message}`);
        ui.ingestErrors.append(li);
      }
    });
    ui.ingestDrop.dataset.state = final.errors.length ? "errors" : "done";
  } finally {
    ingesting = false;
  }
  await loadCollections();
}

dropTarget(ui.ingestDrop, (dt) => filesFromDrop(dt).then(ingestFiles, showError));
for (const input of [ui.ingestFiles, ui.ingestFolder]) {
  input.addEventListener("change", () => {
    const files = filesFromInput(input);
    input.value = "";
    if (files.length) ingestFiles(files);
  });
}

// ----------------------------------------------------------------------------------------------- keyboard
document.addEventListener("keydown", (event) => {
  const typing = event.target instanceof HTMLElement && event.target.closest("input, select, textarea, dialog");
  if (event.key === "/" && !typing) {
    event.preventDefault();
    ui.q.focus();
  }
});

// ----------------------------------------------------------------------------------------------- start
async function start() {
  const config = await api.config();
  if (config.auth_required) {
    ui.changeKey.hidden = false;
    if (!api.key) await askKey("needed");
  }
  await loadCollections();
  document.body.dataset.ready = "true";
}

start().catch(showError);

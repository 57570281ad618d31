// Images on the page. They are decoded from Blobs and drawn on <canvas>: media is fetched with the API key as a
// header, and the page's CSP admits no data: image URLs (blob: only for a clip's poster: results.mjs).

import { evidenceBoxes } from "./model.mjs";

/** Draw an image Blob on a canvas at its natural size (CSS scales it); resolves to {width, height}. */
export async function drawBlob(canvas, blob) {
  const bitmap = await createImageBitmap(blob);
  try {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    return { width: bitmap.width, height: bitmap.height };
  } finally {
    bitmap.close();
  }
}

/** A Blob as a `data:image/...;base64,` URI (the form /search and /upsert accept for inline images). */
export function toDataUri(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const uri = String(reader.result);
      const comma = uri.indexOf(",");
      // The server reads the format from the bytes; it only needs the URI to say it is an image.
      const type = blob.type && blob.type.startsWith("image/") ? blob.type : "image/png";
      resolve(`data:${type};base64,${uri.slice(comma + 1)}`);
    };
    reader.onerror = () => reject(reader.error ?? new Error("could not read the file"));
    reader.readAsDataURL(blob);
  });
}

/** Place evidence boxes (absolutely positioned, in % of the image) over `frame`, which holds the image canvas. */
export function drawEvidence(frame, evidence, size) {
  frame.querySelectorAll(".evidence-box").forEach((el) => el.remove());
  for (const box of evidenceBoxes(evidence, size.width, size.height)) {
    const el = document.createElement("span");
    el.className = "evidence-box";
    el.title = box.text;
    el.style.setProperty("left", `${box.left}%`);
    el.style.setProperty("top", `${box.top}%`);
    el.style.setProperty("width", `${box.width}%`);
    el.style.setProperty("height", `${box.height}%`);
    frame.append(el);
  }
}

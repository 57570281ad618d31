// HTTP to the Search service: JSON APIs and media, with the API key as a header (never in a URL).
// The key lives in sessionStorage (this tab only); a 401 asks for it again and retries once.

import { describeError } from "./model.mjs";

const KEY_ITEM = "mmsearch.apiKey";
const MEDIA_CACHE_SIZE = 300;

/** A refused request: HTTP status, the service's error code, the field at fault and a readable message. */
export class ApiError extends Error {
  constructor(info) {
    super(info.message);
    this.name = "ApiError";
    Object.assign(this, info);
  }
}

export class Api {
  /** `askKey(reason)` resolves once the user gave a key that the server accepts. */
  constructor(askKey) {
    this.askKey = askKey;
    this.media = new Map(); // path -> Promise<Blob>, most recent last
  }

  get key() {
    return sessionStorage.getItem(KEY_ITEM);
  }

  set key(value) {
    if (value) sessionStorage.setItem(KEY_ITEM, value);
    else sessionStorage.removeItem(KEY_ITEM);
  }

  /** Whether the server wants a key (asked once, before any API call). */
  async config() {
    const res = await fetch("/ui/config.json", { cache: "no-store" });
    if (!res.ok) return { auth_required: false };
    return res.json();
  }

  /** One request with `key` (the stored one by default); no retry. */
  async raw(path, init = {}, key = this.key) {
    const headers = new Headers(init.headers ?? {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    return fetch(path, { ...init, headers, cache: "no-store", redirect: "error" });
  }

  async send(path, init) {
    let res = await this.raw(path, init);
    if (res.status === 401) {
      this.key = null;
      await this.askKey("refused");
      res = await this.raw(path, init);
    }
    return res;
  }

  /** POST a JSON body; the parsed answer, or an ApiError. */
  async post(path, body, { signal } = {}) {
    const res = await this.send(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal,
    });
    const text = await res.text();
    if (!res.ok) throw new ApiError(describeError(res.status, text));
    try {
      return JSON.parse(text);
    } catch {
      throw new ApiError({ status: res.status, title: "Bad response", code: null, field: null, message: "the server answered something that is not JSON" });
    }
  }

  /** A same-origin path as a Blob, fetched with the key; not cached (clips are played once, and may be large). */
  async fetchBlob(path) {
    const res = await this.send(path, {});
    if (!res.ok) throw new ApiError(describeError(res.status, await res.text()));
    return res.blob();
  }

  /** A stored image (same-origin path) as a Blob, fetched with the key; recent ones are cached. */
  blob(path) {
    let pending = this.media.get(path);
    if (pending) {
      this.media.delete(path); // move to the most recent end
    } else {
      pending = this.fetchBlob(path);
      pending.catch(() => this.media.delete(path));
    }
    this.media.set(path, pending);
    while (this.media.size > MEDIA_CACHE_SIZE) this.media.delete(this.media.keys().next().value);
    return pending;
  }
}

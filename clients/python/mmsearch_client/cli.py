"""``mmsearch``: index folders, search, embed, rerank and check health from the command line.

    mmsearch index ./photos ./notes --collection docs      # rerun-safe: already indexed files are skipped
    mmsearch search "red bicycle" --collection docs --top-k 5
    mmsearch search "refund rate" --mode keyword              # vector | keyword | hybrid (default: the server's)
    mmsearch search --image query.jpg --no-rerank
    mmsearch embed "a red bicycle" --query --json
    mmsearch rerank "red bike" "a red bicycle" "a blue car"
    mmsearch calibrate ./labelled --collection docs          # eval-format set: queries.jsonl + qrels.tsv
    mmsearch search "red bicycle" -c docs --min-score 0.5     # calibrated: one threshold for every modality
    mmsearch uncalibrate -c docs                              # remove the calibration
    mmsearch health

The server and key come from ``--url`` / ``--api-key`` or ``$MMSEARCH_URL`` / ``$MMSEARCH_API_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from mmsearch_client._base import DEFAULT_BASE_URL, __version__
from mmsearch_client._client import Client
from mmsearch_client._progress import rich_available
from mmsearch_client.errors import APIStatusError, MMSearchError, NotFoundError, field_to_loc
from mmsearch_client.eval.command import add_eval_parser
from mmsearch_client.inputs import Document, Image, InputLike, content_id, pair, to_wire_clip
from mmsearch_client.results import BatchFailure
from mmsearch_client.schemas import CalibrationInfo, Item

__all__ = [
    "AUDIO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "TEXT_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "build_parser",
    "main",
    "scan",
]

INGEST_COMMANDS = frozenset({"index", "eval", "calibrate", "reindex"})
INGEST_TIMEOUT_S = 600.0
"""HTTP timeout of commands that upload images: with OCR on, a batch of images takes about 2 s each to read."""
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
TEXT_EXTENSIONS = frozenset({".txt", ".md"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".mov", ".mkv"})
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg"})
CLIP_EXTENSIONS = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS
"""Sent one per request (a clip is large, and the server takes at most ``MMSEARCH_MAX_AV_INPUTS_PER_REQUEST``)."""
SUPPORTED_EXTENSIONS = IMAGE_EXTENSIONS | TEXT_EXTENSIONS | CLIP_EXTENSIONS


class CLIError(Exception):
    """A local problem (a missing file, ...), reported as one line with exit status 1."""


class UsageError(CLIError):
    """The command line itself is wrong (as argparse's own errors): one line, exit status 2."""


# --------------------------------------------------------------------------------------------------- output
def _print_table(title: str | None, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if rich_available() and sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h in headers:
            table.add_column(h, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    if title:
        print(title)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _snippet(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _image_ref(image: str, metadata: dict[str, Any] | None = None) -> str:
    path = (metadata or {}).get("path")
    if isinstance(path, str):
        return path
    if image.startswith("data:"):
        return f"<{image[5 : image.find(';')] or 'image'} data URI, {len(image) * 3 // 4 // 1024} KiB>"
    return _snippet(image, 70)


def _describe(text: str | None, image: str | None, metadata: dict[str, Any] | None = None) -> str:
    parts = []
    if image is not None:
        parts.append(f"[image] {_image_ref(image, metadata)}")
    if text is not None:
        parts.append(_snippet(text, 70 if image is None else 40))
    return " | ".join(parts) or "-"


def _segment(t0: float | None, t1: float | None) -> str:
    """Where in an audio or video document the hit is."""
    return "" if t0 is None or t1 is None else f" @ {t0:g}-{t1:g} s"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# -------------------------------------------------------------------------------------------------- index
def scan(paths: Sequence[str], unsupported: list[Path] | None = None) -> Iterator[Path]:
    """Files under ``paths`` (recursively, sorted, hidden entries skipped) with a supported extension; the others
    are appended to ``unsupported`` when given."""
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise CLIError(f"{raw}: no such file or directory")
        if root.is_file():
            candidates: Iterator[Path] = iter([root])
        else:
            candidates = (
                p
                for p in sorted(root.rglob("*"))
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
            )
        for p in candidates:
            if p.suffix.lower() in SUPPORTED_EXTENSIONS:
                yield p
            elif unsupported is not None:
                unsupported.append(p)


class _Pending:
    """The documents to upload, built lazily (images are read when their batch is sent)."""

    def __init__(self, entries: list[tuple[str, Path]]) -> None:
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Document]:
        for doc_id, path in self.entries:
            meta: dict[str, Any] = {"path": str(path), "filename": path.name}
            suffix = path.suffix.lower()
            if suffix in TEXT_EXTENSIONS:
                text = path.read_bytes().decode("utf-8", errors="replace")
                yield Document(doc_id, text=text, metadata=meta)
            elif suffix in VIDEO_EXTENSIONS:
                yield Document(doc_id, video=path, metadata=meta)
            elif suffix in AUDIO_EXTENSIONS:
                yield Document(doc_id, audio=path, metadata=meta)
            else:
                yield Document(doc_id, image=path, metadata=meta)


def _existing_ids(client: Client, ids: list[str], collection: str, batch_size: int) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), batch_size):
        try:
            resp = client.get(ids[start : start + batch_size], collection=collection)
        except NotFoundError as e:
            if e.code == "collection_not_found":
                return found  # nothing indexed yet
            raise
        found.update(d.id for d in resp.documents)
    return found


def cmd_index(client: Client, args: argparse.Namespace) -> int:
    unsupported: list[Path] = []
    entries, skipped = _distinct_files(scan(args.paths, unsupported))
    existing = _existing_ids(client, [e[0] for e in entries], args.collection, args.batch_size)
    todo = [e for e in entries if e[0] not in existing]
    skipped += len(entries) - len(todo)
    indexed = failed = ocr_images = ocr_lines = 0
    clips = [e for e in todo if e[1].suffix.lower() in CLIP_EXTENSIONS]
    others = [e for e in todo if e[1].suffix.lower() not in CLIP_EXTENSIONS]
    for part, batch_size in ((others, args.batch_size), (clips, 1)):
        if not part:
            continue
        summary = client.upsert_many(
            _Pending(part),
            collection=args.collection,
            batch_size=batch_size,
            concurrency=args.concurrency,
            progress=not args.no_progress,
        )
        indexed, failed = indexed + summary.upserted, failed + summary.failed
        ocr_images, ocr_lines = ocr_images + summary.ocr_images, ocr_lines + summary.ocr_lines
        _print_failures(summary.failures[:20], dict(part))
    if unsupported:
        kinds = ", ".join(sorted({p.suffix.lower() or "(no extension)" for p in unsupported}))
        print(f"mmsearch: skipped {len(unsupported)} file(s) of an unsupported type ({kinds})", file=sys.stderr)
    read = f" (text read from {ocr_images} images, {ocr_lines} lines)" if ocr_images else ""
    print(f"indexed {indexed}, skipped {skipped + len(unsupported)}, failed {failed}{read}")
    return 1 if failed else 0


def _distinct_files(paths: Iterable[Path]) -> tuple[list[tuple[str, Path]], int]:
    """``(content id, path)`` of each file worth indexing, and how many were skipped (empty text, same content)."""
    entries: list[tuple[str, Path]] = []
    seen: set[str] = set()
    skipped = 0
    for path in paths:
        data = path.read_bytes()
        if path.suffix.lower() in TEXT_EXTENSIONS and not data.decode("utf-8", errors="replace").strip():
            skipped += 1  # empty text file: nothing to index
            continue
        doc_id = content_id(data)
        if doc_id in seen:
            skipped += 1  # same content as another file in this run
            continue
        seen.add(doc_id)
        entries.append((doc_id, path))
    return entries, skipped


def _print_failures(failures: Sequence[BatchFailure], by_id: dict[str, Path]) -> None:
    for failure in failures:
        paths = [by_id[i] for i in failure.ids if i in by_id]
        names = ", ".join(str(p) for p in paths[:3])
        more = f" (+{len(failure.ids) - 3} more)" if len(failure.ids) > 3 else ""
        reason = _failure_reason(failure.error, failure.ids, paths)
        print(f"mmsearch: failed: {names}{more}: {reason}", file=sys.stderr)


def _failure_reason(error: MMSearchError, ids: Sequence[str], paths: Sequence[Path]) -> str:
    """Why documents failed, without repeating what the line already names (their paths, ids, batch positions)."""
    if isinstance(error, APIStatusError):
        in_batch = error.field is not None and field_to_loc(error.field)[0] == "documents"
        # documents[k]... is a position in the batch, meaningless here
        message = error.message.removeprefix(f"{error.field}: ") if in_batch else error.message
        return f"{error.code}: {message}"
    reason = error.message
    for prefix in [*ids, *(str(p) for p in paths)]:
        reason = reason.removeprefix(f"{prefix}: ")
    return reason


# ------------------------------------------------------------------------------------------------- search
def _query(text: str | None, image: str | None) -> InputLike:
    if image is not None:
        img = Image.url(image) if image.startswith(("http://", "https://")) else Image.from_path(image)
        return pair(text, img) if text else Item(image=img.uri)
    if not text:
        raise UsageError("give a query text, --image, or both")
    return text


def _search_query(args: argparse.Namespace) -> InputLike:
    """The query of ``mmsearch search``: text, an image, or a clip (``--video``/``--audio``), with or without text."""
    kind: Literal["audio", "video"] | None = "video" if args.video else "audio" if args.audio else None
    if kind is None:
        return _query(args.text, args.image)
    if args.image:
        raise UsageError(f"give --image or --{kind}, not both")
    ref = getattr(args, kind)
    clip = ref if ref.startswith(("http://", "https://")) else to_wire_clip(Path(ref), kind)
    return Item.model_validate({"text": args.text, kind: clip})


def cmd_search(client: Client, args: argparse.Namespace) -> int:
    filt = None
    if args.filter:
        try:
            filt = json.loads(args.filter)
        except ValueError as e:
            raise UsageError(f"--filter is not valid JSON: {e}") from None
    res = client.search(
        _search_query(args),
        collection=args.collection,
        top_k=args.top_k,
        candidates=args.candidates,  # the server raises the shortlist to top_k, as for every client
        rerank=False if args.no_rerank else ("auto" if args.rerank_auto else None),
        filter=filt,
        timeout=args.deadline,
        mode=args.mode,
        min_score=args.min_score,
    )
    if args.json:
        print(res.model_dump_json(indent=2))
        return 0
    rows = [
        [
            str(rank),
            hit.id,
            _score(hit.score),
            _score(hit.retrieval_score),
            _score(hit.rerank_score),
            _describe(hit.text, hit.image, hit.metadata) + _segment(hit.t0, hit.t1),
        ]
        for rank, hit in enumerate(res.hits, 1)
    ]
    t = res.timings_ms
    title = (
        f"{len(res.hits)} hits from {args.collection!r} ({'reranked' if res.reranked else 'not reranked'}, "
        f"{res.mode}, {t.total:.0f} ms)"
    )
    _print_table(title, ["#", "id", "score", "retrieval", "rerank", "content"], rows)
    for rank, hit in enumerate(res.hits if args.evidence else [], 1):
        for ev in hit.evidence[:2]:
            where = f" at {', '.join(f'{v:.0f}' for v in ev.box)}" if ev.box else ""
            print(f"  #{rank} {ev.source}{where}: {_snippet(ev.text, 90)}")
    for w in res.warnings:
        print(f"note: {w.message}" + (f" ({w.id})" if w.id else ""), file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------ embed / rerank
def cmd_embed(client: Client, args: argparse.Namespace) -> int:
    res = client.encode(
        [_query(args.text, args.image)],
        input_type="query" if args.query else "document",
        dimensions=args.dimensions,
    )
    if args.json:
        print(res.model_dump_json())
        return 0
    vec = res.embeddings[0]
    head = ", ".join(f"{v:.4f}" for v in vec[:8])
    print(f"model: {res.model}\ndims: {res.dimensions}\n[{head}{', ...' if len(vec) > 8 else ''}]")
    return 0


def cmd_rerank(client: Client, args: argparse.Namespace) -> int:
    res = client.rerank(args.query, list(args.documents), top_n=args.top_n)
    if args.json:
        print(res.model_dump_json(indent=2))
        return 0
    rows = [
        [str(rank), str(r.index), _score(r.relevance_score), _snippet(args.documents[r.index])]
        for rank, r in enumerate(res.results, 1)
    ]
    _print_table(f"reranked by {res.model}", ["#", "doc", "score", "text"], rows)
    return 0


# ------------------------------------------------------------------------------------------------- status
def cmd_health(client: Client, args: argparse.Namespace) -> int:
    status = client.health()
    if args.json:
        print(json.dumps({"live": status.live, "ready": status.ready, "detail": status.detail}))
    else:
        line = f"{client.base_url}: live={'yes' if status.live else 'no'} ready={'yes' if status.ready else 'no'}"
        print(line + (f" ({status.detail})" if status.detail else ""))
    return 0 if status else 1


def _calibrated(c: CalibrationInfo | None) -> str:
    return f"{c.method} on {c.set!r} ({c.queries} queries, {c.created})" if c is not None else "no"


def cmd_collections(client: Client, args: argparse.Namespace) -> int:
    res = client.collections()
    if args.json:
        print(res.model_dump_json(indent=2))
        return 0
    rows = [[c.name, str(c.count), str(c.dimension), c.model, _calibrated(c.calibration)] for c in res.collections]
    _print_table(None, ["collection", "documents", "dimension", "model", "calibrated"], rows)
    return 0


def cmd_alias(client: Client, args: argparse.Namespace) -> int:
    """``alias list``, ``alias set ALIAS COLLECTION`` (created or switched atomically), ``alias delete ALIAS``."""
    if args.action != "list" and (not args.alias or (args.action == "set") != bool(args.collection)):
        want = "ALIAS COLLECTION" if args.action == "set" else "ALIAS"
        print(f"mmsearch alias {args.action}: give {want}", file=sys.stderr)
        return 2
    if args.action == "set":
        res: BaseModel = client.set_alias(args.alias, args.collection)
    elif args.action == "delete":
        res = client.delete_alias(args.alias)
    else:
        listed = client.aliases()
        if not args.json:
            _print_table(None, ["alias", "collection"], [[a.alias, a.collection] for a in listed.aliases])
            return 0
        res = listed
    print(res.model_dump_json(indent=2) if args.json else _alias_line(res))
    return 0


def _alias_line(res: BaseModel) -> str:
    d = res.model_dump()
    if "deleted" in d:
        return f"alias {d['alias']!r} {'deleted' if d['deleted'] else 'did not exist'}"
    was = f" (was {d['previous']!r})" if d.get("previous") else ""
    return f"alias {d['alias']!r} -> {d['collection']!r}{was}"


def cmd_reindex(client: Client, args: argparse.Namespace) -> int:
    """Re-embed a collection (or an alias's) with another model into a new collection, then switch the alias."""
    from mmsearch_client.reindex import reindex

    try:
        res = reindex(client, args.collection, args.model, into=args.into, batch_size=args.batch_size)
    except ValueError as e:
        print(f"mmsearch reindex: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res.__dict__, indent=2))
        return 0
    print(f"copied {res.copied} documents from {res.source!r} into {res.target!r} (model {res.model!r})")
    if res.skipped:
        print(f"skipped {len(res.skipped)} embedding-only documents: {', '.join(res.skipped[:10])}")
    if res.alias:
        print(f"alias {res.alias!r} -> {res.target!r}; drop {res.source!r} when nothing reads it")
    else:
        print(f"{args.collection!r} is a collection, not an alias: point an alias at {res.target!r} to switch")
    return 0


def cmd_calibrate(client: Client, args: argparse.Namespace) -> int:
    from mmsearch_client.eval.dataset import load_dataset
    from mmsearch_client.eval.runner import query_input

    ds = load_dataset(args.dataset)
    queries: list[dict[str, Any]] = []
    for qid in ds.judged_queries:
        q = query_input(ds.queries[qid])
        content = {"text": q} if isinstance(q, str) else q.model_dump(exclude_none=True)
        queries.append({**content, "relevant": sorted(ds.relevant(qid))})
    if not queries:
        raise CLIError(f"{args.dataset}: no query has a relevant document in qrels.tsv")
    res = client.calibrate(
        queries, collection=args.collection, method=args.method, name=args.name or ds.name, candidates=args.candidates
    )
    if args.json:
        print(res.model_dump_json(indent=2))
        return 0
    c = res.calibration
    rows = [[pair, str(p.samples), str(p.positives), "fitted"] for pair, p in c.pairs.items()]
    rows += [[pair, "", "", f"skipped: {why}"] for pair, why in c.skipped.items()]
    title = f"{res.collection!r} calibrated ({c.method}) on {c.set!r}: {c.queries} queries, {c.created}"
    _print_table(title, ["pair", "samples", "relevant", ""], rows)
    return 0


def cmd_uncalibrate(client: Client, args: argparse.Namespace) -> int:
    res = client.uncalibrate(collection=args.collection)
    if args.json:
        print(res.model_dump_json(indent=2))
    elif res.removed:
        print(f"{res.collection!r}: calibration removed")
    else:
        print(f"{res.collection!r} was not calibrated")
    return 0


def cmd_drop(client: Client, args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise CLIError(f"refusing to drop {args.collection!r} without --yes (standard input is not a terminal)")
        answer = input(f"Drop collection {args.collection!r} and all its documents? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not dropped", file=sys.stderr)
            return 1
    res = client.drop_collection(args.collection, missing_ok=args.missing_ok)
    if args.json:
        print(res.model_dump_json())
    else:
        print(f"dropped {res.collection}" if res.dropped else f"{res.collection}: no such collection")
    return 0


# --------------------------------------------------------------------------------------------------- parser
def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=f"server URL ($MMSEARCH_URL, {DEFAULT_BASE_URL})")
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="API key ($MMSEARCH_API_KEY)")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="HTTP timeout in seconds")

    parser = argparse.ArgumentParser(
        prog="mmsearch", description="Index, search, embed and rerank with an mmsearch server."
    )
    parser.add_argument("--url", default=None, help=f"server URL ($MMSEARCH_URL, {DEFAULT_BASE_URL})")
    parser.add_argument("--api-key", default=None, help="API key ($MMSEARCH_API_KEY)")
    parser.add_argument("--timeout", type=float, default=None, help="HTTP timeout in seconds")
    parser.add_argument("--version", action="version", version=f"mmsearch-client {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("index", parents=[common], help="index files and folders (images, .txt, .md)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--collection", "-c", default="default")
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument("--concurrency", type=_positive, default=4)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", parents=[common], help="search a collection")
    p.add_argument("text", nargs="?", help="query text")
    p.add_argument("--image", help="query image: a local path or an http(s) URL")
    media = p.add_mutually_exclusive_group()
    media.add_argument("--video", help="query video: a local path or an http(s) URL (where the model reads video)")
    media.add_argument("--audio", help="query audio clip: a local path or an http(s) URL (where the model reads audio)")
    p.add_argument("--collection", "-c", default="default")
    p.add_argument("--top-k", "-k", type=_positive, default=10)
    p.add_argument("--candidates", type=_positive, default=50)
    p.add_argument(
        "--mode", choices=["vector", "keyword", "hybrid"], help="retrieval mode (default: the server's choice)"
    )
    p.add_argument("--evidence", action="store_true", help="print the lines that matched (with image boxes)")
    p.add_argument("--no-rerank", action="store_true", help="retrieval only")
    p.add_argument("--rerank-auto", action="store_true", help="rerank if the reranker answers, else don't")
    p.add_argument("--filter", help='metadata filter as JSON, e.g. \'{"lang": "en"}\'')
    p.add_argument("--deadline", type=float, help="server-side deadline in seconds")
    p.add_argument(
        "--min-score",
        type=float,
        help="drop vector candidates below it (calibrated probability on a calibrated collection, else cosine)",
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "calibrate", parents=[common], help="fit a collection's score calibration from a labelled query set"
    )
    p.add_argument("dataset", help="an eval dataset folder (queries.jsonl and qrels.tsv; its corpus ids are indexed)")
    p.add_argument("--collection", "-c", default="default")
    p.add_argument("--method", choices=["platt", "isotonic"], default="platt")
    p.add_argument("--name", help="what the set is called (default: the folder's name)")
    p.add_argument("--candidates", type=_positive, default=50, help="candidates drawn per modality and query")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("uncalibrate", parents=[common], help="remove a collection's score calibration")
    p.add_argument("--collection", "-c", default="default")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_uncalibrate)

    p = sub.add_parser("embed", parents=[common], help="embed a text and/or an image")
    p.add_argument("text", nargs="?")
    p.add_argument("--image", help="a local path or an http(s) URL")
    p.add_argument("--query", action="store_true", help="use the query prompt (default: document)")
    p.add_argument("--dimensions", type=_positive)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("rerank", parents=[common], help="rerank texts against a query")
    p.add_argument("query")
    p.add_argument("documents", nargs="+", metavar="DOC")
    p.add_argument("--top-n", type=_positive)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rerank)

    p = sub.add_parser("health", parents=[common], help="check liveness and readiness (exit 1 if not ready)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("collections", parents=[common], help="list collections")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_collections)

    p = sub.add_parser("alias", parents=[common], help="list, set (create or switch atomically) or delete aliases")
    p.add_argument("action", choices=["list", "set", "delete"])
    p.add_argument("alias", nargs="?", default=None)
    p.add_argument("collection", nargs="?", default=None, help="the collection the alias points at (set)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_alias)

    p = sub.add_parser(
        "reindex", parents=[common], help="re-embed a collection with another model, then switch its alias"
    )
    p.add_argument("collection", metavar="COLLECTION_OR_ALIAS")
    p.add_argument("--model", required=True, help="the embedder the new collection is bound to")
    p.add_argument("--into", help="the new collection (default: <collection>_<model>)")
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("drop", parents=[common], help="drop a collection and all its documents")
    p.add_argument("collection")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--missing-ok", action="store_true", help="succeed (exit 0) if the collection does not exist")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_drop)

    add_eval_parser(sub, common)  # mmsearch eval: see mmsearch_client/eval/README.md
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 failure, 2 usage, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        kwargs: dict[str, Any] = {"api_key": args.api_key or os.environ.get("MMSEARCH_API_KEY") or None}
        if args.timeout is not None:
            kwargs["timeout"] = args.timeout
        elif args.command in INGEST_COMMANDS:
            kwargs["timeout"] = INGEST_TIMEOUT_S  # reading the text in images takes seconds per image
        with Client(args.url or os.environ.get("MMSEARCH_URL") or None, **kwargs) as client:
            status: int = args.func(client, args)
            return status
    except UsageError as e:
        print(f"mmsearch: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (MMSearchError, CLIError, OSError, ValueError) as e:
        print(f"mmsearch: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mmsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

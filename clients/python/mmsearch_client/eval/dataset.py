"""Evaluation datasets in a BEIR-style directory, loaded and validated with errors that name file, line and field.

    DATASET/
      corpus.jsonl    {"_id": "d1", "text": "...", "image": "images/d1.png", "metadata": {...}}   one per line
      queries.jsonl   {"_id": "q1", "text": "...", "image": "...", "metadata": {"group": "..."}}  one per line
      qrels.tsv       query-id <TAB> corpus-id <TAB> score                                          header optional

An item has ``text``, one medium (``image``, ``audio`` or ``video``) or both (a corpus item may also carry a BEIR
``title``, put before its text). A medium is a path relative to the dataset directory, an absolute path, an
``http(s)://`` URL (fetched by the server) or a ``data:image/`` (``data:audio/``, ``data:video/``) URI; audio and
video files are the ones ``mmsearch index`` takes (.mp4, .webm, .mov, .mkv, .wav, .flac, .mp3, .ogg, .m4a).
``score`` is a graded relevance (``> 0`` relevant). A 4-column TREC qrels line (``query-id 0 corpus-id score``) is
accepted too. A query's optional ``metadata.group`` names a subset reported
on its own (e.g. ``exact_copy``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmsearch_client import fields
from mmsearch_client.inputs import CLIP_TYPES, detect_image_mime

__all__ = ["Dataset", "DatasetError", "EvalItem", "Issue", "load_dataset", "modality_of"]

Modality = Literal["text", "image", "text+image", "audio", "video", "text+audio", "text+video"]
ClipKind = Literal["audio", "video"]

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_FILE = "qrels.tsv"

_CORPUS_FIELDS = frozenset({"_id", "text", "title", "image", "audio", "video", "metadata"})
_QUERY_FIELDS = frozenset({"_id", "text", "image", "audio", "video", "metadata"})
MEDIA_FIELDS = ("image", "audio", "video")
_MAX_ISSUES_SHOWN = 20


def modality_of(text: str | None, image: str | None, audio: str | None = None, video: str | None = None) -> Modality:
    medium = "image" if image is not None else "audio" if audio is not None else "video" if video is not None else None
    if medium is None:
        return "text"
    return f"text+{medium}" if text is not None else medium  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a dataset file (``line`` is 1-based, 0 for the file as a whole)."""

    file: str
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        return f"{where}: {self.field + ': ' if self.field else ''}{self.message}"


class DatasetError(ValueError):
    """The dataset is invalid; ``issues`` lists every problem found (file, line, field)."""

    def __init__(self, root: Path, issues: list[Issue]) -> None:
        self.root = root
        self.issues = issues
        shown = "\n  ".join(str(i) for i in issues[:_MAX_ISSUES_SHOWN])
        more = f"\n  ... and {len(issues) - _MAX_ISSUES_SHOWN} more" if len(issues) > _MAX_ISSUES_SHOWN else ""
        super().__init__(f"invalid dataset {root}: {len(issues)} problem(s)\n  {shown}{more}")


@dataclass(frozen=True, slots=True)
class EvalItem:
    """A corpus document or a query. ``image`` is resolved: an absolute path, a URL or a data URI."""

    id: str
    text: str | None = None
    image: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    line: int = 0
    audio: str | None = None
    video: str | None = None

    @property
    def modality(self) -> Modality:
        return modality_of(self.text, self.image, self.audio, self.video)

    @property
    def clip(self) -> tuple[ClipKind, str] | None:
        """``(kind, resolved value)`` of an audio or video item."""
        if self.audio is not None:
            return "audio", self.audio
        return ("video", self.video) if self.video is not None else None

    @property
    def image_is_remote(self) -> bool:
        return self.image is not None and self.image.startswith(("http://", "https://", "data:"))

    @property
    def group(self) -> str | None:
        g = self.metadata.get("group")
        return g if isinstance(g, str) else None


@dataclass(slots=True)
class Dataset:
    root: Path
    corpus: dict[str, EvalItem]
    queries: dict[str, EvalItem]
    qrels: dict[str, dict[str, float]]
    """query id -> corpus id -> graded relevance (only queries with at least one line)."""

    @property
    def name(self) -> str:
        return self.root.name

    def relevant(self, qid: str) -> dict[str, float]:
        return {d: g for d, g in self.qrels.get(qid, {}).items() if g > 0}

    @property
    def judged_queries(self) -> list[str]:
        """Query ids, in file order, that have at least one relevant document."""
        return [q for q in self.queries if self.relevant(q)]


def _read_jsonl(path: Path, issues: list[Issue]) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                issues.append(Issue(path.name, lineno, None, f"not valid JSON: {e.msg} (column {e.colno})"))
                continue
            if not isinstance(obj, dict):
                issues.append(Issue(path.name, lineno, None, f"expected a JSON object, got {type(obj).__name__}"))
                continue
            yield lineno, obj


def _resolve_media(root: Path, value: str, kind: str) -> tuple[str | None, str | None, Path | None]:
    """``(resolved, problem, local file)`` for an ``image``, ``audio`` or ``video`` field value."""
    if value.startswith(("http://", "https://")) or value.lower().startswith(f"data:{kind}/"):
        return value, None, None
    if value.startswith("data:"):
        return None, f"a data URI must be data:{kind}/...;base64,...", None
    if "://" in value:
        return None, f"unsupported URL scheme in {value!r} (use http(s)://, a data:{kind}/ URI or a file path)", None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = root / path
    if not path.is_file():
        return None, f"{kind} file not found: {path}", None
    return str(path.resolve()), None, path


def _resolve_clip(root: Path, value: str, kind: str) -> tuple[str | None, str | None]:
    """``(resolved, problem)`` for an ``audio`` or ``video`` field value (the server reads the bytes' container)."""
    resolved, problem, path = _resolve_media(root, value, kind)
    if path is not None and path.suffix.lower() not in CLIP_TYPES:
        return None, f"not an audio or video file ({', '.join(CLIP_TYPES)}): {path}"
    return resolved, problem


def _resolve_image(root: Path, value: str) -> tuple[str | None, str | None]:
    """``(resolved, problem)`` for an ``image`` field value."""
    resolved, problem, path = _resolve_media(root, value, "image")
    if path is None:
        return resolved, problem
    try:
        with path.open("rb") as f:
            head = f.read(32)
    except OSError as e:
        return None, f"cannot read image file {path}: {e.strerror}"
    if detect_image_mime(head) is None:
        return None, f"not a recognised image file (PNG, JPEG, GIF, WebP, BMP, TIFF): {path}"
    return str(path.resolve()), None


Complain = Callable[[str | None, str], None]
"""Records an issue: ``(field, message)``."""


def _parse_item(
    root: Path, fname: str, lineno: int, obj: dict[str, Any], allowed: frozenset[str], issues: list[Issue]
) -> EvalItem | None:
    before = len(issues)

    def bad(field_name: str | None, message: str) -> None:
        issues.append(Issue(fname, lineno, field_name, message))

    unknown = sorted(set(obj) - allowed)
    if unknown:
        bad(unknown[0], f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    doc_id = _item_id(obj.get("_id"), bad)
    text = _item_text(obj, bad)
    image, audio, video = (_item_media(root, obj.get(kind), kind, bad) for kind in MEDIA_FIELDS)
    metadata = _item_metadata(obj.get("metadata", {}), bad)
    media = [m for m in MEDIA_FIELDS if obj.get(m) is not None]
    if text is None and not media:
        bad(None, "has neither 'text' nor 'image', 'audio' or 'video'")
    if len(media) > 1:
        bad(media[1], f"one medium per item: {' and '.join(media)} given")
    if len(issues) > before:
        return None
    return EvalItem(doc_id, text=text, image=image, metadata=dict(metadata), line=lineno, audio=audio, video=video)


def _item_id(raw_id: Any, bad: Complain) -> str:
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or str(raw_id).strip() == "":
        bad("_id", "required: a non-empty string")
        return ""
    if len(str(raw_id)) > fields.MAX_ID_CHARS:
        bad("_id", f"at most {fields.MAX_ID_CHARS} characters")
    return str(raw_id)


def _string_field(obj: dict[str, Any], name: str, bad: Complain) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        bad(name, f"must be a string, got {type(value).__name__}")
        return None
    return value


def _item_text(obj: dict[str, Any], bad: Complain) -> str | None:
    """``text``, with ``title`` (BEIR) on a line before it; blank is none."""
    text = _string_field(obj, "text", bad)
    title = _string_field(obj, "title", bad)
    if title and title.strip():
        text = f"{title}\n{text}" if text and text.strip() else title
    return text if text is not None and text.strip() else None


def _item_media(root: Path, raw: Any, kind: str, bad: Complain) -> str | None:
    """An ``image``, ``audio`` or ``video`` field, resolved (None, with an issue recorded, when it is not usable)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        bad(kind, "must be a non-empty string: a relative or absolute path, an http(s) URL or a data URI")
        return None
    resolved, problem = _resolve_image(root, raw) if kind == "image" else _resolve_clip(root, raw, kind)
    if problem:
        bad(kind, problem)
    return resolved


def _item_metadata(metadata: Any, bad: Complain) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        bad("metadata", f"must be an object, got {type(metadata).__name__}")
        return {}
    for key in metadata:
        if not fields.METADATA_KEY_RE.fullmatch(key):
            bad(f"metadata.{key}", "keys are 1-64 letters, digits or '_' (not starting with a digit)")
    return metadata


def _load_items(root: Path, fname: str, allowed: frozenset[str], issues: list[Issue]) -> dict[str, EvalItem]:
    path = root / fname
    items: dict[str, EvalItem] = {}
    if not path.is_file():
        issues.append(Issue(fname, 0, None, f"missing: expected {path}"))
        return items
    seen_lines: dict[str, int] = {}
    for lineno, obj in _read_jsonl(path, issues):
        item = _parse_item(root, fname, lineno, obj, allowed, issues)
        if item is None:
            raw = obj.get("_id")
            if isinstance(raw, (str, int)) and not isinstance(raw, bool):
                seen_lines.setdefault(str(raw), lineno)  # still known, so qrels do not also complain
            continue
        if item.id in seen_lines:
            issues.append(
                Issue(fname, lineno, "_id", f"duplicate id {item.id!r} (first on line {seen_lines[item.id]})")
            )
            continue
        seen_lines[item.id] = lineno
        items[item.id] = item
    if not seen_lines and not any(i.file == fname for i in issues):
        issues.append(Issue(fname, 0, None, "is empty"))
    return items


def _known_ids(root: Path, fname: str) -> set[str]:
    """Every ``_id`` in a JSONL file, valid line or not (so qrels report only ids that are really unknown)."""
    ids: set[str] = set()
    path = root / fname
    if not path.is_file():
        return ids
    with path.open(encoding="utf-8") as f:
        for raw in f:
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("_id"), (str, int)) and not isinstance(obj["_id"], bool):
                ids.add(str(obj["_id"]))
    return ids


def _load_qrels(
    root: Path, query_ids: set[str], corpus_ids: set[str], issues: list[Issue]
) -> dict[str, dict[str, float]]:
    path = root / QRELS_FILE
    qrels: dict[str, dict[str, float]] = {}
    if not path.is_file():
        issues.append(Issue(QRELS_FILE, 0, None, f"missing: expected {path}"))
        return qrels
    first_line: dict[tuple[str, str], int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cols = _qrel_columns(line)
            if len(cols) != 3:
                issues.append(Issue(QRELS_FILE, lineno, None, f"expected 3 tab-separated columns, got {len(cols)}"))
                continue
            qid, did, score_text = cols
            try:
                score = float(score_text)
            except ValueError:
                if lineno == 1 and not first_line:
                    continue  # header, e.g. "query-id  corpus-id  score"
                issues.append(Issue(QRELS_FILE, lineno, "score", f"not a number: {score_text!r}"))
                continue
            problems = _qrel_problems(qid, did, query_ids, corpus_ids, first_line.get((qid, did)))
            issues += [Issue(QRELS_FILE, lineno, where, message) for where, message in problems]
            first_line.setdefault((qid, did), lineno)
            if not problems:
                qrels.setdefault(qid, {})[did] = score
    if not first_line and not any(i.file == QRELS_FILE for i in issues):
        issues.append(Issue(QRELS_FILE, 0, None, "has no judgements"))
    return qrels


def _qrel_columns(line: str) -> list[str]:
    """``query-id corpus-id score`` (tab- or space-separated); TREC's 4 columns lose their ``iteration``."""
    cols = [c.strip() for c in (line.split("\t") if "\t" in line else line.split())]
    return [cols[0], cols[2], cols[3]] if len(cols) == 4 else cols


def _qrel_problems(
    qid: str, did: str, query_ids: set[str], corpus_ids: set[str], first: int | None
) -> list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
    if qid not in query_ids:
        problems.append(("query-id", f"unknown query id {qid!r} (not in {QUERIES_FILE})"))
    if did not in corpus_ids:
        problems.append(("corpus-id", f"unknown corpus id {did!r} (not in {CORPUS_FILE})"))
    if first is not None:
        problems.append((None, f"duplicate judgement for ({qid}, {did}), first on line {first}"))
    return problems


def load_dataset(path: str | Path) -> Dataset:
    """Load and validate a dataset directory; raises :class:`DatasetError` listing every problem found."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(
            root,
            [Issue(str(root), 0, None, "not a directory (expected corpus.jsonl, queries.jsonl, qrels.tsv inside)")],
        )
    issues: list[Issue] = []
    corpus = _load_items(root, CORPUS_FILE, _CORPUS_FIELDS, issues)
    queries = _load_items(root, QUERIES_FILE, _QUERY_FIELDS, issues)
    qrels = _load_qrels(root, _known_ids(root, QUERIES_FILE), _known_ids(root, CORPUS_FILE), issues)
    if not issues and not any(g > 0 for q in qrels.values() for g in q.values()):
        issues.append(Issue(QRELS_FILE, 0, "score", "no judgement has a score > 0: nothing is relevant"))
    if issues:
        raise DatasetError(root, issues)
    return Dataset(root=root, corpus=corpus, queries=queries, qrels=qrels)

"""Run an evaluation against a server: ingest the corpus, run every query in each run (retrieval mode x rerank
off/on), measure.

The result is a plain JSON-able ``dict`` (the report), rendered by :mod:`mmsearch_client.eval.report`.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmsearch_client._client import Client
from mmsearch_client._progress import make_progress
from mmsearch_client.errors import MMSearchError
from mmsearch_client.eval.dataset import ClipKind, Dataset, EvalItem, modality_of
from mmsearch_client.eval.gap import construct_gap
from mmsearch_client.eval.metrics import DEFAULT_METRICS, aggregate, first_relevant_rank, percentile, summarize
from mmsearch_client.inputs import Document, Image, to_wire_clip
from mmsearch_client.schemas import Item, SearchResponse

__all__ = [
    "MODES",
    "REPORT_VERSION",
    "RETRIEVAL_MODES",
    "TINY_WARNING",
    "EvalOptions",
    "RunSpec",
    "fresh_collection",
    "modality_pairs",
    "restrict_modalities",
    "run_eval",
    "run_specs",
]

REPORT_VERSION = 1
TINY_WARNING = "RANDOM-WEIGHT TINY MODEL: these numbers measure the plumbing, not retrieval quality"
MODES: dict[str, bool] = {"rerank_off": False, "rerank_on": True}
"""Run names when no retrieval mode is named (the server's default mode), and their rerank flag."""
RETRIEVAL_MODES = ("vector", "keyword", "hybrid")
STAGES = ("read", "embed", "retrieve", "rerank", "total")
PERCENTILES = (50, 95, 99)


def fresh_collection() -> str:
    return f"eval_{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One pass over the queries: its name in the report, the retrieval mode asked (None: the server's default)
    and whether to rerank."""

    name: str
    mode: str | None
    rerank: bool
    balance: str | None = None
    """``auto`` or ``off`` (None: the server's default, ``auto``)."""


def run_specs(
    modes: Sequence[str] | None = None, rerank: Sequence[bool] = (False, True), balance: Sequence[str] = ()
) -> list[RunSpec]:
    """``rerank_off``/``rerank_on`` for the server's default mode, or ``<mode>`` and ``<mode>+rerank`` per mode;
    with ``balance`` (``off``, ``auto``) each of those once per balance setting (``... balance=off``)."""
    if not modes:
        specs = [RunSpec(name, None, flag) for name, flag in MODES.items() if flag in rerank]
    else:
        for m in modes:
            if m not in RETRIEVAL_MODES:
                raise ValueError(f"unknown retrieval mode {m!r}: use {', '.join(RETRIEVAL_MODES)}")
        specs = [RunSpec(f"{m}+rerank" if flag else m, m, flag) for m in modes for flag in rerank]
    if not balance:
        return specs
    return [RunSpec(f"{s.name} balance={b}", s.mode, s.rerank, b) for s in specs for b in balance]


@dataclass(slots=True)
class EvalOptions:
    collection: str = field(default_factory=fresh_collection)
    top_k: int = 10
    candidates: int = 50
    keep: bool = False
    concurrency: int = 1
    batch_size: int = 32
    progress: bool = True
    runs: Sequence[RunSpec] = field(default_factory=run_specs)
    gap: float | None = None
    """Construct a modality gap (``mmsearch_client.eval.gap``): after ingest, every image document's stored
    embedding is shifted by this offset and stored again."""


@dataclass(slots=True)
class _Outcome:
    response: SearchResponse | None
    client_ms: float
    error: str | None = None


def _wire_image(item: EvalItem) -> str:
    assert item.image is not None
    if item.image_is_remote:
        return item.image
    return Image.from_path(item.image).uri


def _clip_of(item: EvalItem, kind: ClipKind) -> str | Path | None:
    """An item's audio or video clip: a URL or data URI as given, a file by path; None for another medium."""
    if item.clip is None or item.clip[0] != kind:
        return None
    value = item.clip[1]
    return value if value.startswith(("http://", "https://", "data:")) else Path(value)


def _wire_clip(item: EvalItem, kind: ClipKind) -> str | None:
    clip = _clip_of(item, kind)
    return None if clip is None else to_wire_clip(clip, kind)


def _document(item: EvalItem) -> Document:
    image: Path | Image | None = None
    if item.image is not None:
        image = Image(item.image) if item.image_is_remote else Path(item.image)
    audio, video = _clip_of(item, "audio"), _clip_of(item, "video")
    return Document(item.id, text=item.text, image=image, metadata=dict(item.metadata), audio=audio, video=video)


class _LazyDocs:
    """The corpus as documents, images read only when their batch is sent."""

    def __init__(self, items: Sequence[EvalItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Document]:
        return (_document(i) for i in self.items)


def query_input(item: EvalItem) -> str | Item:
    if item.clip is not None:
        return Item(text=item.text, audio=_wire_clip(item, "audio"), video=_wire_clip(item, "video"))
    if item.image is None:
        assert item.text is not None
        return item.text
    return Item(text=item.text, image=_wire_image(item))


def _latency(outcomes: Sequence[_Outcome]) -> dict[str, dict[str, float | int | None]]:
    out: dict[str, dict[str, float | int | None]] = {}
    ok = [o for o in outcomes if o.response is not None]
    series = {s: [float(getattr(o.response.timings_ms, s, 0.0)) for o in ok if o.response] for s in STAGES}
    series["client"] = [o.client_ms for o in ok]
    for stage, values in series.items():
        row: dict[str, float | int | None] = {"n": len(values)}
        for p in PERCENTILES:
            row[f"p{p}"] = percentile(values, p)
        row["mean"] = sum(values) / len(values) if values else None
        out[stage] = row
    return out


def _evaluate_mode(
    ds: Dataset, qids: Sequence[str], outcomes: dict[str, _Outcome], doc_modality: Callable[[str], str]
) -> dict[str, Any]:
    rankings = {q: [h.id for h in o.response.hits] for q, o in outcomes.items() if o.response is not None}
    qrels = {q: ds.qrels.get(q, {}) for q in qids}
    errors = [f"{q}: {o.error}" for q, o in outcomes.items() if o.error]
    answered = [o.response for o in outcomes.values() if o.response is not None]
    return {
        "retrieval_modes": sorted({r.mode for r in answered}),
        "overall": aggregate(rankings, qrels).to_dict(),
        "by_pair": _by_pair(ds, qids, rankings),
        "by_group": _by_group(ds, qids, qrels, rankings),
        "latency_ms": _latency(list(outcomes.values())),
        "scores": _score_distributions(ds, outcomes, doc_modality),
        "reranked": sum(1 for r in answered if r.reranked),
        "errors": len(errors),
        "error_samples": errors[:5],
        "per_query": {
            q: {
                "first_relevant_rank": first_relevant_rank(rankings[q], ds.relevant(q)) if q in rankings else None,
                "top1": rankings[q][0] if rankings.get(q) else None,
                "top1_retrieval_score": _top_score(outcomes[q]),
            }
            for q in qids
        },
    }


def _by_pair(ds: Dataset, qids: Sequence[str], rankings: dict[str, list[str]]) -> dict[str, Any]:
    """Metrics per (query modality -> modality of the relevant document): judgements restricted to that modality."""
    by_pair_qrels: dict[str, dict[str, dict[str, float]]] = {}
    for q in qids:
        qmod = ds.queries[q].modality
        for did, grade in ds.relevant(q).items():
            pair = f"{qmod}->{ds.corpus[did].modality}"
            by_pair_qrels.setdefault(pair, {}).setdefault(q, {})[did] = grade
    return {
        pair: aggregate({q: rankings[q] for q in pq if q in rankings}, pq).to_dict()
        for pair, pq in sorted(by_pair_qrels.items())
    }


def _by_group(
    ds: Dataset, qids: Sequence[str], qrels: dict[str, dict[str, float]], rankings: dict[str, list[str]]
) -> dict[str, Any]:
    """Metrics per query group (queries without a group are in none)."""
    groups: dict[str, list[str]] = {}
    for q in qids:
        g = ds.queries[q].group
        if g is not None:
            groups.setdefault(g, []).append(q)
    return {
        g: aggregate({q: rankings[q] for q in members if q in rankings}, {q: qrels[q] for q in members}).to_dict()
        for g, members in sorted(groups.items())
    }


def _score_distributions(
    ds: Dataset, outcomes: dict[str, _Outcome], doc_modality: Callable[[str], str]
) -> dict[str, Any]:
    """Every returned hit's scores, by (query modality -> hit modality), relevant or not."""
    scores: dict[str, dict[str, dict[str, list[float]]]] = {"retrieval": {}, "rerank": {}}
    for q, o in outcomes.items():
        if o.response is None:
            continue
        relevant = ds.relevant(q)
        qmod = ds.queries[q].modality
        for h in o.response.hits:
            pair = f"{qmod}->{doc_modality(h.id) or modality_of(h.text, h.image, h.audio, h.video)}"
            side = "relevant" if h.id in relevant else "non_relevant"
            for kind, score in (("retrieval", h.retrieval_score), ("rerank", h.rerank_score)):
                if score is not None:
                    scores[kind].setdefault(pair, {"relevant": [], "non_relevant": []})[side].append(score)
    return {
        kind: {pair: {side: summarize(v) for side, v in sides.items()} for pair, sides in sorted(per.items())}
        for kind, per in scores.items()
    }


def _top_score(outcome: _Outcome) -> float | None:
    if outcome.response is None or not outcome.response.hits:
        return None
    return outcome.response.hits[0].retrieval_score


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_eval(client: Client, ds: Dataset, opts: EvalOptions, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Ingest ``ds.corpus`` into ``opts.collection``, run every judged query in each mode, return the report."""
    info = client.info()
    plan = _plan(info, ds, opts, log)
    ds = plan.dataset
    qids = ds.judged_queries
    report = _report_header(client, info, plan, opts)
    items = list(ds.corpus.values())
    existed = _collection_count(client, opts.collection) is not None  # a collection of the user's: never dropped
    try:
        report["ingest"] = _ingest(client, items, opts, log)
        if opts.gap is not None:
            _gap(client, items, opts, log)
        inputs = {q: query_input(ds.queries[q]) for q in qids}
        for spec in plan.runs:
            outcomes = _run_queries(client, inputs, opts, plan.candidates, spec)
            report["runs"][spec.name] = {
                "mode": spec.mode,
                "rerank": spec.rerank,
                **_evaluate_mode(ds, qids, outcomes, lambda d: _modality(ds, d)),
            }
    finally:
        report["collection_kept"] = opts.keep
        report["collection_dropped"] = False
        if not opts.keep and existed:
            _cleanup(client, opts.collection, [i.id for i in items], log)
        elif not opts.keep:  # the run made it: remove it whole
            report["collection_dropped"] = _drop(client, opts.collection, log)
    return report


@dataclass
class _Plan:
    """What an evaluation runs, given the server: the dataset restricted to what it can index, the runs it can do."""

    original: Dataset
    dataset: Dataset
    skipped: dict[str, Any]
    runs: list[RunSpec]
    candidates: int
    embedder: dict[str, Any]
    tiny: bool
    pairs: dict[str, Any]


def _plan(info: dict[str, Any], ds: Dataset, opts: EvalOptions, log: Callable[[str], None]) -> _Plan:
    raw_embedder = info.get("embedder")
    embedder: dict[str, Any] = raw_embedder if isinstance(raw_embedder, dict) else {}
    tiny = bool(embedder.get("tiny_random_weights"))
    max_candidates = info.get("max_candidates")
    candidates = max(opts.candidates, opts.top_k)
    if isinstance(max_candidates, int) and candidates > max_candidates:
        raise ValueError(f"--candidates {candidates} is over the server's limit ({max_candidates})")
    if tiny:
        log(f"!!! {TINY_WARNING} !!!")
    runs = _runs(info, opts, log)
    modalities = _searchable_modalities(info, embedder)
    supported = [str(m) for m in modalities] if isinstance(modalities, list) and modalities else None
    restricted, skipped = _restrict(ds, supported, embedder, log)
    pairs = modality_pairs(ds, supported)
    if pairs["skipped"]:
        log("skipping pairs " + "; ".join(f"{p}: {why}" for p, why in pairs["skipped"].items()))
    return _Plan(ds, restricted, skipped, runs, candidates, embedder, tiny, pairs)


def _runs(info: dict[str, Any], opts: EvalOptions, log: Callable[[str], None]) -> list[RunSpec]:
    """The runs asked for, less the rerank ones when the server has no reranker."""
    runs = list(opts.runs)
    reranker = info.get("reranker")
    if isinstance(reranker, dict) and reranker.get("model") is None and any(r.rerank for r in runs):
        log("the server has no reranker: the rerank runs are skipped")
        runs = [r for r in runs if not r.rerank]
    return runs


def modality_pairs(ds: Dataset, supported: Sequence[str] | None) -> dict[str, Any]:
    """The query -> relevant-document modality pairs ``ds`` judges, split into those the server's model can be
    evaluated on (both sides among its ``supported`` modalities; all when unknown) and those skipped, each with
    what the model lacks: ``{"supported", "evaluated": [pair], "skipped": {pair: reason}}``."""
    judged = {(ds.queries[q].modality, ds.corpus[d].modality) for q in ds.judged_queries for d in ds.relevant(q)}
    ok = set(supported or ())
    evaluated: list[str] = []
    skipped: dict[str, str] = {}
    for qmod, dmod in sorted(judged):
        missing = sorted({qmod, dmod} - ok) if supported else []
        if missing:
            skipped[f"{qmod}->{dmod}"] = f"the model does not embed {' or '.join(missing)}"
        else:
            evaluated.append(f"{qmod}->{dmod}")
    return {"supported": sorted(ok) if supported else None, "evaluated": evaluated, "skipped": skipped}


def _restrict(
    ds: Dataset, supported: list[str] | None, embedder: dict[str, Any], log: Callable[[str], None]
) -> tuple[Dataset, dict[str, Any]]:
    """``ds`` without what the server cannot index (see :func:`restrict_modalities`), saying what was skipped."""
    if not supported:
        return ds, {}
    restricted, skipped = restrict_modalities(ds, supported)
    if skipped:
        what = ", ".join(f"{n} {m} {kind}" for kind in ("documents", "queries") for m, n in skipped[kind].items())
        log(f"skipping {what}: {embedder.get('model', 'the embedder')} embeds {', '.join(skipped['supported'])}")
    return restricted, skipped


def _report_header(client: Client, info: dict[str, Any], plan: _Plan, opts: EvalOptions) -> dict[str, Any]:
    original, ds = plan.original, plan.dataset
    return {
        "version": REPORT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 - py3.10 client
        "dataset": {
            "path": str(ds.root),
            "name": ds.name,
            "corpus": len(original.corpus),
            "queries": len(original.queries),
            "judged_queries": len(original.judged_queries),
            "unjudged_queries": len(original.queries) - len(original.judged_queries),
            "evaluated_documents": len(ds.corpus),
            "evaluated_queries": len(ds.judged_queries),
        },
        "server": {
            "url": client.base_url,
            "embedder": plan.embedder,
            "reranker": info.get("reranker"),
            "ocr": info.get("ocr"),
            "modality_paths": info.get("modality_paths"),
            "index": info.get("index_uri_kind"),
            "tiny_random_weights": plan.tiny,
        },
        "warning": TINY_WARNING if plan.tiny else None,
        "skipped": plan.skipped,
        "modality_pairs": plan.pairs,
        "params": {
            "collection": opts.collection,
            "top_k": opts.top_k,
            "candidates": plan.candidates,
            "runs": {r.name: {"mode": r.mode, "rerank": r.rerank, "balance": r.balance} for r in plan.runs},
            "gap": opts.gap,
        },
        "metrics": list(DEFAULT_METRICS),
        "runs": {},
    }


def _ingest(client: Client, items: list[EvalItem], opts: EvalOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Upsert the corpus; what happened, for the report (``ValueError`` when nothing could be ingested)."""
    t0 = time.perf_counter()
    summary = client.upsert_many(
        _LazyDocs(items), collection=opts.collection, batch_size=opts.batch_size, progress=opts.progress
    )
    ingest: dict[str, Any] = {
        "upserted": summary.upserted,
        "failed": summary.failed,
        "seconds": round(time.perf_counter() - t0, 3),
        "failures": [f"{', '.join(f.ids[:3])}: {f.message}" for f in summary.failures[:5]],
    }
    if summary.upserted == 0:
        raise ValueError(f"no document could be ingested: {ingest['failures'][:1]}")
    ingest["ocr_images"] = summary.ocr_images
    read = f", text read from {summary.ocr_images} images" if summary.ocr_images else ""
    log(f"ingested {summary.upserted} documents into {opts.collection!r} ({summary.failed} failed{read})")
    count = _collection_count(client, opts.collection)
    ingest["collection_count"] = count
    if count is not None and count > summary.upserted:
        log(
            f"warning: {opts.collection!r} holds {count - summary.upserted} documents that are not from this "
            "dataset: they take part in every ranking"
        )
    return ingest


def _gap(client: Client, items: Sequence[EvalItem], opts: EvalOptions, log: Callable[[str], None]) -> None:
    """Shift every stored ``image`` document's embedding by ``opts.gap`` (a constructed modality gap): read the
    embeddings the server made (whatever path its embedder takes: images, or their text), shift, store them back
    with the same content (so each document keeps its modality)."""
    assert opts.gap is not None
    ids = [it.id for it in items]
    vectors: dict[str, list[float]] = {}
    for i in range(0, len(ids), 256):
        got = client.get(ids[i : i + 256], collection=opts.collection, include_embedding=True)
        vectors.update({d.id: d.embedding for d in got.documents if d.embedding is not None})
    kept = [it for it in items if it.id in vectors]
    shifted = [it.modality == "image" for it in kept]
    gapped = construct_gap([vectors[it.id] for it in kept], shifted, offset=opts.gap, seed=0)
    docs = [_document(it) for it in kept]
    for d, v in zip(docs, gapped, strict=True):
        d.embedding = v
    client.upsert_many(docs, collection=opts.collection, batch_size=opts.batch_size, progress=opts.progress)
    log(f"constructed a modality gap: {sum(shifted)} image documents shifted by {opts.gap}")


def restrict_modalities(ds: Dataset, supported: Sequence[str]) -> tuple[Dataset, dict[str, Any]]:
    """The dataset without the documents and queries whose modality the embedder does not support.

    Judgements of removed documents are dropped too, so a query keeps only what can be found; a query left with
    no relevant document becomes unjudged (not run, counted). Returns ``(dataset, what was skipped)``.
    """
    ok = set(supported)
    corpus, queries = _of_modalities(ds.corpus, ok), _of_modalities(ds.queries, ok)
    if len(corpus) == len(ds.corpus) and len(queries) == len(ds.queries):
        return ds, {}
    qrels = {q: {d: g for d, g in judged.items() if d in corpus} for q, judged in ds.qrels.items() if q in queries}
    out = Dataset(root=ds.root, corpus=corpus, queries=queries, qrels={q: j for q, j in qrels.items() if j})
    skipped: dict[str, Any] = {
        "supported": sorted(ok),
        "documents": _removed_by_modality(ds.corpus, corpus),
        "queries": _removed_by_modality(ds.queries, queries),
        "queries_left_unjudged": sum(1 for q in queries if ds.relevant(q) and not out.relevant(q)),
    }
    return out, skipped


def _of_modalities(items: dict[str, EvalItem], ok: set[str]) -> dict[str, EvalItem]:
    return {key: item for key, item in items.items() if item.modality in ok}


def _removed_by_modality(before: dict[str, EvalItem], after: dict[str, EvalItem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key, item in before.items():
        if key not in after:
            counts[item.modality] = counts.get(item.modality, 0) + 1
    return counts


def _searchable_modalities(info: dict[str, Any], embedder: dict[str, Any]) -> Any:
    """The modalities the server can index: from its ``modality_paths`` (images may go through OCR text), else
    the embedder's own."""
    paths = info.get("modality_paths")
    if isinstance(paths, dict) and paths:
        return [m for m, path in paths.items() if not str(path).startswith("unsupported")]
    return embedder.get("modalities")


def _collection_count(client: Client, collection: str) -> int | None:
    try:
        return next((c.count for c in client.collections().collections if c.name == collection), None)
    except MMSearchError:
        return None


def _modality(ds: Dataset, doc_id: str) -> str:
    item = ds.corpus.get(doc_id)
    return item.modality if item is not None else ""


def _run_queries(
    client: Client, inputs: dict[str, str | Item], opts: EvalOptions, candidates: int, spec: RunSpec
) -> dict[str, _Outcome]:
    mode: Any = spec.mode
    balance: Any = spec.balance

    def one(qid: str) -> tuple[str, _Outcome]:
        t = time.perf_counter()
        try:
            res = client.search(
                inputs[qid],
                collection=opts.collection,
                top_k=opts.top_k,
                candidates=candidates,
                rerank=spec.rerank,
                mode=mode,
                balance=balance,
            )
        except MMSearchError as e:
            return qid, _Outcome(None, (time.perf_counter() - t) * 1000, " ".join(str(e).split()))
        return qid, _Outcome(res, (time.perf_counter() - t) * 1000)

    results: dict[str, _Outcome] = {}
    with (
        make_progress(opts.progress, len(inputs), f"queries, {spec.name}") as bar,
        ThreadPoolExecutor(max_workers=opts.concurrency, thread_name_prefix="mmsearch-eval") as pool,
    ):
        for qid, outcome in pool.map(one, inputs):
            results[qid] = outcome
            bar.advance()
    return results


def _drop(client: Client, collection: str, log: Callable[[str], None]) -> bool:
    try:
        return client.drop_collection(collection, missing_ok=True).dropped
    except MMSearchError as e:
        log(f"warning: could not drop the evaluation collection {collection!r}: {e}")
        return False


def _cleanup(client: Client, collection: str, ids: list[str], log: Callable[[str], None]) -> None:
    try:
        for start in range(0, len(ids), 256):
            client.delete(ids[start : start + 256], collection=collection)
    except MMSearchError as e:
        log(f"warning: could not delete the evaluation documents from {collection!r}: {e}")

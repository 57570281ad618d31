"""Retrieval-evaluation unit tests: metrics against hand-computed values, the dataset loader's errors, the synthetic
set's determinism, and the evaluator + report driven by an in-memory fake client (no server)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from mmsearch_client.eval.dataset import DatasetError, load_dataset
from mmsearch_client.eval.metrics import (
    aggregate,
    dedupe,
    evaluate_query,
    first_relevant_rank,
    ndcg_at_k,
    percentile,
    rank_by_score,
    recall_at_k,
    reciprocal_rank_at_k,
    summarize,
)
from mmsearch_client.eval.report import print_comparison, print_report
from mmsearch_client.eval.runner import TINY_WARNING, EvalOptions, modality_pairs, query_input, run_eval
from mmsearch_client.eval.synthetic import GROUP_EXACT, write_synthetic
from mmsearch_client.results import UpsertSummary
from mmsearch_client.schemas import (
    CollectionInfo,
    CollectionsResponse,
    Item,
    SearchHit,
    SearchResponse,
    SearchTimings,
)

L2, L3, L4, L5 = math.log2(2), math.log2(3), math.log2(4), math.log2(5)


# ------------------------------------------------------------------------------------------------- metrics
def test_binary_relevance_hand_computed() -> None:
    ranking, qrels = ["a", "b", "c", "d", "e"], {"b": 1.0, "d": 1.0}
    assert recall_at_k(ranking, qrels, 1) == 0.0
    assert recall_at_k(ranking, qrels, 2) == 0.5
    assert recall_at_k(ranking, qrels, 5) == 1.0
    assert recall_at_k(ranking, qrels, 10) == 1.0  # k past the end of the ranking
    assert reciprocal_rank_at_k(ranking, qrels, 10) == 0.5
    assert reciprocal_rank_at_k(ranking, qrels, 1) == 0.0  # first relevant at rank 2 > k
    assert first_relevant_rank(ranking, qrels) == 2
    # DCG = 1/log2(3) + 1/log2(5); ideal = 1/log2(2) + 1/log2(3)
    assert ndcg_at_k(ranking, qrels, 5) == pytest.approx((1 / L3 + 1 / L5) / (1 / L2 + 1 / L3))
    assert ndcg_at_k(ranking, qrels, 5) == pytest.approx(0.650921, abs=1e-6)
    assert ndcg_at_k(ranking, qrels, 1) == 0.0


def test_graded_relevance_ndcg() -> None:
    # judged: a=1, c=3, z=2 (z never retrieved). Linear gain.
    ranking, qrels = ["a", "b", "c"], {"a": 1.0, "c": 3.0, "z": 2.0}
    dcg3 = 1 / L2 + 3 / L4  # 2.5
    idcg3 = 3 / L2 + 2 / L3 + 1 / L4  # 4.76186
    assert ndcg_at_k(ranking, qrels, 3) == pytest.approx(dcg3 / idcg3)
    assert ndcg_at_k(ranking, qrels, 3) == pytest.approx(0.525004, abs=1e-6)
    assert ndcg_at_k(ranking, qrels, 1) == pytest.approx(1 / 3)  # a (1) where c (3) would be ideal
    assert recall_at_k(ranking, qrels, 3) == pytest.approx(2 / 3)
    # the ideal ranking scores 1.0; a higher grade first beats a lower grade first
    assert ndcg_at_k(["c", "z", "a"], qrels, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["c", "a"], qrels, 2) > ndcg_at_k(["a", "c"], qrels, 2)  # type: ignore[operator]


def test_non_positive_grades_are_not_relevant() -> None:
    qrels = {"a": 0.0, "b": -1.0, "c": 1.0}
    assert recall_at_k(["a", "b", "c"], qrels, 2) == 0.0
    assert reciprocal_rank_at_k(["a", "b", "c"], qrels, 10) == pytest.approx(1 / 3)
    assert ndcg_at_k(["c"], qrels, 10) == 1.0


def test_ties_keep_the_given_order() -> None:
    """Tie rule: equal scores keep the order given (stable sort); nothing is averaged over permutations."""
    scored = [("a", 0.5), ("b", 0.9), ("c", 0.5), ("d", 0.9)]
    assert rank_by_score(scored) == ["b", "d", "a", "c"]
    qrels = {"c": 1.0}
    assert reciprocal_rank_at_k(rank_by_score(scored), qrels, 10) == pytest.approx(1 / 4)
    # the same scores given in another order rank c before a: the tie is broken by position, not by id
    swapped = [("c", 0.5), ("b", 0.9), ("a", 0.5), ("d", 0.9)]
    assert rank_by_score(swapped) == ["b", "d", "c", "a"]
    assert reciprocal_rank_at_k(rank_by_score(swapped), qrels, 10) == pytest.approx(1 / 3)
    # all scores equal: exactly the returned order
    assert rank_by_score([("x", 1.0), ("y", 1.0), ("z", 1.0)]) == ["x", "y", "z"]


def test_duplicates_count_once_at_their_best_rank() -> None:
    assert dedupe(["a", "a", "b", "a", "c"]) == ["a", "b", "c"]
    assert first_relevant_rank(["a", "a", "b"], {"b": 1}) == 2
    assert recall_at_k(["b", "b", "x"], {"b": 1, "c": 1}, 2) == 0.5  # b counted once


def test_missing_judgements_excluded_and_counted() -> None:
    rankings = {"q1": ["a", "x"], "q2": ["b"], "q3": ["c"], "q5": []}
    qrels = {"q1": {"a": 1.0}, "q2": {"b": 0.0}, "q4": {"x": 1.0}, "q5": {"y": 1.0}}
    agg = aggregate(rankings, qrels)
    assert agg.evaluated == 2  # q1 (perfect) and q5 (empty ranking: scores 0)
    assert agg.missing_judgements == 2  # q2 (only a 0 grade), q3 (no qrels at all)
    assert agg.missing_rankings == 1  # q4 judged but never run
    assert agg.means == {"recall@1": 0.5, "recall@5": 0.5, "recall@10": 0.5, "ndcg@10": 0.5, "mrr@10": 0.5}
    assert agg.to_dict()["queries"] == 2
    assert recall_at_k(["a"], {}, 1) is None
    assert ndcg_at_k(["a"], {"a": 0}, 1) is None
    assert reciprocal_rank_at_k(["a"], {}, 10) is None
    assert evaluate_query(["a"], {}) is None
    assert aggregate({}, {}).means == {}


def test_metric_argument_errors() -> None:
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(["a"], {"a": 1}, 0)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_query(["a"], {"a": 1}, ["precision@3"])
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_query(["a"], {"a": 1}, ["recall@x"])


def test_percentiles_and_summary() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 95) == pytest.approx(3.85)  # position 0.95 * 3 = 2.85
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile(values, 100) == 4.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)
    assert summarize([3.0, 1.0, 2.0]) == {"n": 3, "min": 1.0, "median": 2.0, "max": 3.0}
    assert summarize([]) == {"n": 0, "min": None, "median": None, "max": None}


# -------------------------------------------------------------------------------------------------- loader
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def _write(root: Path, corpus: list[Any], queries: list[Any], qrels: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join((c if isinstance(c, str) else json.dumps(c)) + "\n" for c in corpus))
    (root / "queries.jsonl").write_text("".join((q if isinstance(q, str) else json.dumps(q)) + "\n" for q in queries))
    (root / "qrels.tsv").write_text(qrels)
    return root


def test_loader_accepts_a_valid_dataset(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(PNG)
    absolute = tmp_path / "abs.png"
    absolute.write_bytes(PNG)
    ds = _write(
        tmp_path,
        [
            {"_id": "d1", "text": "hello"},
            {"_id": "d2", "image": "img/a.png", "metadata": {"k": 1}},
            {"_id": 3, "title": "T", "text": "body", "image": str(absolute)},
            {"_id": "d4", "image": "https://example.com/x.png"},
        ],
        [
            {"_id": "q1", "text": "hi"},
            {"_id": "q2", "image": "img/a.png", "metadata": {"group": "g"}},
            {"_id": "q3", "text": "x"},
        ],
        "q1\td1\t1\nq1\t3\t2\nq2\td2\t1\nq3\td4\t0\n",  # no header; q3 has only a 0 grade
    )
    d = load_dataset(ds)
    assert [d.corpus[i].modality for i in ("d1", "d2", "3", "d4")] == ["text", "image", "text+image", "image"]
    assert d.corpus["3"].text == "T\nbody"
    assert d.corpus["d2"].image == str((tmp_path / "img" / "a.png").resolve())
    assert d.qrels["q1"] == {"d1": 1.0, "3": 2.0}
    assert d.judged_queries == ["q1", "q2"]
    assert d.queries["q2"].group == "g"
    # a header line and TREC's 4 columns are accepted
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1 0 d1 1\n")
    assert load_dataset(ds).qrels == {"q1": {"d1": 1.0}}


def test_loader_reports_every_problem_with_file_line_field(tmp_path: Path) -> None:
    ds = _write(
        tmp_path,
        [
            {"_id": "d1", "text": "ok"},
            {"_id": "d2"},  # line 2: neither text nor image
            {"_id": "d3", "image": "missing.png"},  # line 3: missing file
            "{not json",  # line 4
            {"_id": "d1", "text": "dup"},  # line 5: duplicate
            {"_id": "d6", "text": "x", "img": "typo.png"},  # line 6: unknown field
            {"_id": "d7", "text": "x", "metadata": {"bad key": 1}},  # line 7
        ],
        [{"_id": "q1", "text": "hi"}, {"text": "no id"}],
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td1\t1\nq1\tnope\t1\nq1\td1\tlots\nq1\td1\t2\n",
    )
    with pytest.raises(DatasetError) as info:
        load_dataset(ds)
    got = {(i.file, i.line, i.field) for i in info.value.issues}
    assert ("corpus.jsonl", 2, None) in got
    assert ("corpus.jsonl", 3, "image") in got
    assert ("corpus.jsonl", 4, None) in got
    assert ("corpus.jsonl", 5, "_id") in got
    assert ("corpus.jsonl", 6, "img") in got
    assert ("corpus.jsonl", 7, "metadata.bad key") in got
    assert ("queries.jsonl", 2, "_id") in got
    assert ("qrels.tsv", 3, "query-id") in got
    assert ("qrels.tsv", 4, "corpus-id") in got
    assert ("qrels.tsv", 5, "score") in got
    assert ("qrels.tsv", 6, None) in got  # duplicate judgement
    text = str(info.value)
    assert "corpus.jsonl:2: has neither 'text' nor 'image'" in text
    assert "image file not found" in text and "unknown query id 'q9'" in text
    # ids of invalid corpus lines (d2, d3) are still known: qrels naming them get no second complaint
    _write(tmp_path / "b", [{"_id": "d2"}], [{"_id": "q"}], "q\td2\t1\n")
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path / "b")
    assert {(i.file, i.field) for i in info.value.issues} == {("corpus.jsonl", None), ("queries.jsonl", None)}


def test_loader_takes_audio_and_video_and_the_pairs_they_make(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"not decoded by the client: the server reads the container")
    (tmp_path / "clips" / "b.wav").write_bytes(b"RIFF")
    ds = _write(
        tmp_path,
        [
            {"_id": "v", "video": "clips/a.mp4", "text": "a talk"},
            {"_id": "a", "audio": "clips/b.wav"},
            {"_id": "u", "video": "https://example.com/c.webm"},
            {"_id": "t", "text": "plain"},
        ],
        [{"_id": "qv", "video": "clips/a.mp4"}, {"_id": "qa", "audio": "data:audio/wav;base64,UklGRg=="}],
        "qv\tv\t1\nqv\tu\t1\nqa\ta\t1\nqa\tt\t1\n",
    )
    loaded = load_dataset(ds)
    assert {k: i.modality for k, i in loaded.corpus.items()} == {
        "v": "text+video",
        "a": "audio",
        "u": "video",
        "t": "text",
    }
    assert loaded.corpus["v"].clip == ("video", str((tmp_path / "clips" / "a.mp4").resolve()))
    q = query_input(loaded.queries["qv"])
    assert not isinstance(q, str) and q.video is not None and q.video.startswith("data:video/mp4;base64,")
    q = query_input(loaded.queries["qa"])
    assert not isinstance(q, str) and q.audio == "data:audio/wav;base64,UklGRg=="  # a data URI as given

    pairs = modality_pairs(loaded, ["text", "image", "video", "text+video"])
    assert pairs["evaluated"] == ["video->text+video", "video->video"]
    assert pairs["skipped"] == {
        "audio->audio": "the model does not embed audio",
        "audio->text": "the model does not embed audio",
    }
    assert modality_pairs(loaded, None)["skipped"] == {}  # modalities unknown: every pair is tried

    _write(
        tmp_path / "bad",
        [
            {"_id": "d1", "image": "x.png", "video": "clips/a.mp4"},  # line 1: two media
            {"_id": "d2", "video": "data:image/png;base64,AAAA"},  # line 2: not a video data URI
            {"_id": "d3", "audio": "missing.wav"},  # line 3
            {"_id": "d4", "video": "../clips/b.wav"},  # fine: the server reads what the bytes are
            {"_id": "d5", "audio": "ftp://example.com/a.wav"},  # line 5
        ],
        [{"_id": "q", "text": "x"}],
        "q\td4\t1\n",
    )
    (tmp_path / "bad" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path / "bad")
    got = {(i.line, i.field): i.message for i in info.value.issues}
    assert "one medium per item: image and video given" in got[(1, "video")]
    assert "data:video/" in got[(2, "video")] and "audio file not found" in got[(3, "audio")]
    assert "unsupported URL scheme" in got[(5, "audio")] and (4, "video") not in got
    _write(tmp_path / "ext", [{"_id": "d", "audio": "notes.txt"}], [{"_id": "q", "text": "x"}], "q\td\t1\n")
    (tmp_path / "ext" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="not an audio or video file"):
        load_dataset(tmp_path / "ext")


def test_loader_missing_files_and_nothing_relevant(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset(tmp_path / "nope")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path / "empty")
    assert {i.file for i in info.value.issues} == {"corpus.jsonl", "queries.jsonl", "qrels.tsv"}
    _write(tmp_path / "z", [{"_id": "d"}], [{"_id": "q", "text": "t"}], "q\td\t0\n")
    (tmp_path / "z" / "corpus.jsonl").write_text('{"_id": "d", "text": "t"}\n')
    with pytest.raises(DatasetError, match="nothing is relevant"):
        load_dataset(tmp_path / "z")
    (tmp_path / "z" / "x.gif").write_text("not an image")
    (tmp_path / "z" / "corpus.jsonl").write_text('{"_id": "d", "image": "x.gif"}\n')
    with pytest.raises(DatasetError, match="not a recognised image"):
        load_dataset(tmp_path / "z")


# ------------------------------------------------------------------------------------------------ synthetic
def test_synthetic_set_is_deterministic_and_valid(tmp_path: Path) -> None:
    a, b = write_synthetic(tmp_path / "a", seed=0), write_synthetic(tmp_path / "b", seed=0)
    assert (a.corpus, a.queries) == (30, 60)
    assert a.groups == {"text_title": 30, GROUP_EXACT: 20, "image_rerender": 10}
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file())
    for rel in files:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
    ds = load_dataset(a.root)
    mods = [i.modality for i in ds.corpus.values()]
    assert (mods.count("image"), mods.count("text+image"), mods.count("text")) == (20, 5, 5)
    titles = [i.metadata["title"] for i in ds.corpus.values()]
    assert len(set(titles)) == 30
    for q in ds.queries.values():
        (doc_id,) = ds.qrels[q.id]
        if q.group == GROUP_EXACT:
            assert q.image is not None and ds.corpus[doc_id].image is not None
            assert Path(q.image).read_bytes() == Path(ds.corpus[doc_id].image).read_bytes()  # byte-identical copy
    assert all(len((i.text or "").encode()) <= 72 for i in ds.corpus.values())
    other = write_synthetic(tmp_path / "c", seed=1)
    assert (other.root / "corpus.jsonl").read_bytes() != (a.root / "corpus.jsonl").read_bytes()


# --------------------------------------------------------------------------------- evaluator, fake client
class FakeClient:
    """Retrieval = exact content match first, then the rest in corpus order; 'rerank' reverses that order."""

    base_url = "http://fake"

    def __init__(self, modalities: list[str] | None = None) -> None:
        self.docs: dict[str, tuple[str | None, str | None]] = {}
        self.deleted: list[str] = []
        self.modalities = modalities or ["text", "image", "text+image"]

    def info(self) -> dict[str, Any]:
        return {
            "embedder": {"model": "fake", "tiny_random_weights": True, "modalities": self.modalities},
            "max_candidates": 100,
        }

    def upsert_many(self, documents: Any, *, collection: str, batch_size: int, progress: bool) -> UpsertSummary:
        s = UpsertSummary(collection=collection)
        for d in documents:
            wire = d.to_wire()
            self.docs[wire.id] = (wire.text, wire.image)
            s.upserted += 1
        return s

    def search(self, query: str | Item, **kw: Any) -> SearchResponse:
        q = (query, None) if isinstance(query, str) else (query.text, query.image)
        exact = [i for i, c in self.docs.items() if c == q or (q[1] is not None and c[1] == q[1])]
        order = exact + [i for i in self.docs if i not in exact]
        hits = [
            SearchHit(id=i, score=1.0 if i in exact else 0.1, retrieval_score=1.0 if i in exact else 0.1) for i in order
        ]
        if kw["rerank"]:
            hits = hits[::-1]
            for h in hits:
                h.rerank_score = 0.5
        t = SearchTimings(embed=1.0, retrieve=2.0, rerank=3.0 if kw["rerank"] else 0.0, total=6.0)
        return SearchResponse(hits=hits[: kw["top_k"]], reranked=bool(kw["rerank"]), timings_ms=t)

    def collections(self) -> CollectionsResponse:
        return CollectionsResponse(
            collections=[CollectionInfo(name="eval_x", count=len(self.docs) + 1, dimension=2, model="fake")]
        )

    def delete(self, ids: list[str], *, collection: str) -> None:
        self.deleted += ids


def test_run_eval_with_a_fake_client(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "set")
    ds = load_dataset(tmp_path / "set")
    client = FakeClient()
    logs: list[str] = []
    report = run_eval(client, ds, EvalOptions(collection="eval_x", progress=False), log=logs.append)  # type: ignore[arg-type]
    off, on = report["runs"]["rerank_off"], report["runs"]["rerank_on"]
    assert off["by_group"][GROUP_EXACT]["metrics"]["recall@1"] == 1.0
    assert off["by_group"][GROUP_EXACT]["queries"] == 20
    assert off["by_group"]["image_rerender"]["metrics"]["recall@10"] < 1.0  # JPEG bytes differ: no exact match
    assert on["by_group"][GROUP_EXACT]["metrics"]["recall@1"] == 0.0  # the fake 'reranker' reverses the order
    assert set(off["by_pair"]) == {"image->image", "text->image", "text->text", "text->text+image"}
    assert off["latency_ms"]["rerank"]["p50"] == 0.0 and on["latency_ms"]["rerank"]["p99"] == 3.0
    assert off["scores"]["retrieval"]["image->image"]["relevant"]["max"] == 1.0  # exact copies
    assert report["warning"] == TINY_WARNING
    assert report["ingest"]["collection_count"] == 31 and "1 documents that are not from this dataset" in logs[-1]
    assert sorted(client.deleted) == sorted(ds.corpus)
    json.dumps(report)  # JSON-able

    out = io.StringIO()
    print_report(report, out)
    text = out.getvalue()
    assert TINY_WARNING in text.splitlines()[4]  # in the header
    for needle in ("image->image", "text->text+image", "group:image_exact_copy", "p95", "rel med"):
        assert needle in text
    out = io.StringIO()
    print_comparison(report, report, ("a", "b"), out)
    rows = [line.split() for line in out.getvalue().splitlines() if line.strip().startswith("overall")]
    assert [r[:3] for r in rows[:3]] == [["overall", "off", "A"], ["overall", "off", "B"], ["overall", "off", "A-B"]]
    assert rows[2][3:] == ["+0", "+0.000", "+0.000", "+0.000", "+0.000", "+0.000"]

    # an embedder without text+image: those documents are skipped and their only queries are not run
    client = FakeClient(["text", "image"])
    report = run_eval(client, ds, EvalOptions(progress=False, keep=True), log=lambda m: None)  # type: ignore[arg-type]
    assert report["skipped"]["documents"] == {"text+image": 5} and report["skipped"]["queries_left_unjudged"] == 5
    assert (
        report["dataset"]["evaluated_queries"] == 55
        and "text->text+image" not in report["runs"]["rerank_off"]["by_pair"]
    )
    assert client.deleted == [] and report["collection_kept"] is True

"""The modality gap, measured in-process: which fusion balanced retrieval uses (issue #22).

    .venv/bin/python -m bench.gap_fusion            # 4 gap sizes x 3 corpus mixes, ~1 min
    .venv/bin/python -m bench.gap_fusion --tiny     # one small scenario (seconds)

A synthetic corpus shaped like CLIP's: every text vector is ``normalise(mu_text + topic + noise)`` and every image
vector ``normalise(mu_image + topic + noise)``, so the two modalities sit in cones apart (a constant offset
``mu_image - mu_text`` of length ``gap``) while the topic decides relevance in both. Text queries come from the
text cone. Mixes: as many images as texts, texts 9:1, images 9:1 (screenshot collections). Topics are spread at
random, so some queries have relevant documents in one modality only.

Each method turns the per-modality candidate lists into one ranking, with the service's own code
(``service.balance``, ``service.calibration``):

* ``raw``: one top-k by cosine (balance off);
* ``rrf``: reciprocal rank fusion of the per-modality lists, minimum share 0.2;
* ``zscore``: per-modality standardisation from collection statistics (a 512-vector sample per modality),
  minimum share 0.2;
* ``calibrated``: Platt per modality pair on the standardised score, fitted on the other half of the queries.

Reported on the evaluation half of the queries: recall@10 per pair (text->text, text->image), nDCG@10 overall,
and recall@50 of the 50-candidate shortlist (what a reranker would see).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from mmsearch_client.eval.metrics import ndcg_at_k, recall_at_k

from bench.common import base_parser, print_table, run_header, write_results
from service import balance, calibration

DIM = 64
SHORTLIST = 50
TOP_K = 10
MIN_SHARE = 0.2
METHODS = ("raw", "rrf", "zscore", "calibrated")


@dataclass
class Corpus:
    vectors: dict[str, np.ndarray]  # modality -> (n, dim)
    topics: dict[str, np.ndarray]  # modality -> (n,)
    queries: np.ndarray
    query_topics: np.ndarray

    def ids(self, modality: str) -> list[str]:
        return [f"{modality}{i}" for i in range(len(self.vectors[modality]))]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_corpus(rng: np.random.Generator, *, gap: float, texts: int, images: int, topics: int, queries: int) -> Corpus:
    centres = _unit(rng.normal(size=(topics, DIM)))
    mu = _unit(rng.normal(size=(2, DIM)))
    offset = _unit(mu[1] - mu[0] * (mu[1] @ mu[0]))  # orthogonal to the text cone's axis
    mu_text, mu_image = mu[0], mu[0] + gap * offset

    def side(n: int, cone: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
        t = rng.integers(0, topics, size=n)
        return _unit(cone + centres[t] + noise * _unit(rng.normal(size=(n, DIM)))), t

    tv, tt = side(texts, mu_text, 1.0)
    iv, it = side(images, mu_image, 1.0)
    qv, qt = side(queries, mu_text, 0.7)
    return Corpus({"text": tv, "image": iv}, {"text": tt, "image": it}, qv, qt)


def rank(
    corpus: Corpus,
    q: np.ndarray,
    method: str,
    stats: Mapping[str, balance.GroupStats],
    calib: calibration.Calibration | None,
) -> list[balance.Ranked]:
    """The shortlist of ``SHORTLIST`` candidates for query vector ``q``, best first."""
    lists: dict[str, list[tuple[str, float]]] = {}
    for m, vecs in corpus.vectors.items():
        s = vecs @ q
        top = np.argsort(-s)[:SHORTLIST]
        lists[m] = [(f"{m}{i}", float(s[i])) for i in top]
    if method == "raw":
        merged = sorted((x for lst in lists.values() for x in lst), key=lambda x: -x[1])[:SHORTLIST]
        return [balance.Ranked(d, d.rstrip("0123456789"), s, s, r) for r, (d, s) in enumerate(merged)]
    scorers: dict[str, balance.Scorer] | None = None
    if method in ("zscore", "calibrated"):
        scorers = balance.zscore_scorers(q, stats)
    if method == "calibrated":
        assert calib is not None and scorers is not None
        z = scorers
        scorers = {m: _compose(calib.pairs[calibration.pair_key("text", m)], z[m]) for m in lists}
    fused = balance.fuse(lists, scorers)
    return balance.shortlist(fused, SHORTLIST, MIN_SHARE)


def _compose(p: calibration.PairMap, z: balance.Scorer) -> balance.Scorer:
    return lambda raw: p(z(raw))


def fit_calibration(
    corpus: Corpus, qids: Sequence[int], stats: Mapping[str, balance.GroupStats]
) -> calibration.Calibration:
    samples: dict[str, tuple[list[float], list[bool]]] = {}
    for qi in qids:
        q = corpus.queries[qi]
        z = balance.zscore_scorers(q, stats)
        for m, vecs in corpus.vectors.items():
            s = vecs @ q
            for i in np.argsort(-s)[:SHORTLIST]:
                xs, ys = samples.setdefault(calibration.pair_key("text", m), ([], []))
                xs.append(z[m](float(s[i])))
                ys.append(bool(corpus.topics[m][i] == corpus.query_topics[qi]))
    return calibration.fit(samples, method="platt", set_name="bench", queries=len(qids), created="")


def evaluate(corpus: Corpus, rng: np.random.Generator) -> dict[str, Any]:
    n = len(corpus.queries)
    order = rng.permutation(n)
    fit_q, eval_q = order[: n // 2], order[n // 2 :]
    stats = {
        m: balance.GroupStats(len(v), balance.sample_rows(v, balance.SAMPLE_SIZE)) for m, v in corpus.vectors.items()
    }
    calib = fit_calibration(corpus, fit_q, stats)
    out: dict[str, Any] = {}
    for method in METHODS:
        rows: dict[str, list[float]] = {"text->text": [], "text->image": [], "ndcg@10": [], "shortlist_recall": []}
        images_in_top10: list[int] = []
        for qi in eval_q:
            short = rank(corpus, corpus.queries[qi], method, stats, calib)
            ranking = [r.id for r in short]
            t = corpus.query_topics[qi]
            rel = {m: {i: 1.0 for i in _relevant(corpus, m, t)} for m in corpus.vectors}
            both = {**rel["text"], **rel["image"]}
            for m in ("text", "image"):
                r = recall_at_k(ranking, rel[m], TOP_K)
                if r is not None:
                    rows[f"text->{m}"].append(r)
            nd = ndcg_at_k(ranking, both, TOP_K)
            if nd is not None:
                rows["ndcg@10"].append(nd)
            r50 = recall_at_k(ranking, both, SHORTLIST)
            if r50 is not None:
                rows["shortlist_recall"].append(r50)
            images_in_top10.append(sum(1 for x in short[:TOP_K] if x.group == "image"))
        out[method] = {k: float(np.mean(v)) if v else float("nan") for k, v in rows.items()}
        out[method]["images_in_top10"] = float(np.mean(images_in_top10))
    out["kept_at_min_score"] = _kept_share(corpus, eval_q, stats, calib)
    return out


def _relevant(corpus: Corpus, modality: str, topic: int) -> list[str]:
    return [f"{modality}{i}" for i in np.flatnonzero(corpus.topics[modality] == topic)]


def _kept_share(
    corpus: Corpus, qids: Sequence[int], stats: Mapping[str, balance.GroupStats], calib: calibration.Calibration
) -> dict[str, dict[str, float]]:
    """Share of the relevant documents (of the shortlist region) whose calibrated score passes each threshold."""
    scores: dict[str, list[float]] = {"text": [], "image": []}
    for qi in qids:
        q = corpus.queries[qi]
        z = balance.zscore_scorers(q, stats)
        for m, vecs in corpus.vectors.items():
            pm = calib.pairs[calibration.pair_key("text", m)]
            for i in np.flatnonzero(corpus.topics[m] == corpus.query_topics[qi]):
                scores[m].append(pm(z[m](float(vecs[i] @ q))))
    return {
        str(t): {m: float(np.mean(np.asarray(v) >= t)) if v else float("nan") for m, v in scores.items()}
        for t in (0.1, 0.3, 0.5, 0.7)
    }


def main(argv: Sequence[str] | None = None) -> int:
    p: argparse.ArgumentParser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    gaps = [0.0, 1.0] if args.tiny else [0.0, 0.5, 1.0, 2.0]
    size = 2000 if args.tiny else 20_000
    mixes: dict[str, tuple[int, int]] = {"1:1": (size // 2, size // 2)}
    if not args.tiny:
        mixes.update({"texts 9:1": (size * 9 // 10, size // 10), "images 9:1": (size // 10, size * 9 // 10)})
    queries = 100 if args.tiny else 600
    results: dict[str, Any] = {}
    table: list[list[Any]] = []
    for mix, (texts, images) in mixes.items():
        for gap in gaps:
            rng = np.random.default_rng(args.seed)
            corpus = make_corpus(rng, gap=gap, texts=texts, images=images, topics=size // 10, queries=queries)
            res = evaluate(corpus, rng)
            results[f"{mix} gap={gap}"] = res
            for method in METHODS:
                r = res[method]
                table.append(
                    [
                        mix,
                        gap,
                        method,
                        r["text->text"],
                        r["text->image"],
                        r["ndcg@10"],
                        r["shortlist_recall"],
                        r["images_in_top10"],
                    ]
                )
    print_table(
        f"text queries; recall@{TOP_K} per pair, nDCG@{TOP_K}, recall@{SHORTLIST} of the shortlist",
        ["mix", "gap", "method", "t->t R@10", "t->i R@10", "nDCG@10", f"R@{SHORTLIST}", "images@10"],
        table,
    )
    kept = [[k, t, v["text"], v["image"]] for k, r in results.items() for t, v in r["kept_at_min_score"].items()]
    print_table(
        "calibrated: share of relevant documents kept at min_score", ["scenario", "min_score", "text", "image"], kept
    )
    write_results(args.out, "gap_fusion-tiny" if args.tiny else "gap_fusion", {**run_header(args), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

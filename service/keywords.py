"""Terms as keyword search sees them: the analysis behind evidence, coverage and hybrid fusion.

It mirrors LanceDB's native full-text analyzer (simple tokenizer: runs of letters and digits; lower case; ASCII
folding; English stop words; Snowball English stemming), so the words that made a document match are the ones
evidence points at. ``STOPWORDS`` is the list LanceDB 0.40 drops, measured (``tests/test_keywords.py`` checks it
against the index).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import snowballstemmer

MAX_TOKEN_CHARS = 40
"""Longer tokens are not indexed (LanceDB's ``max_token_length``)."""

# fmt: off
STOPWORDS = frozenset([
    "a", "about", "after", "again", "against", "all", "am", "an", "and", "are", "as", "at", "be", "been", "being",
    "below", "between", "both", "but", "by", "can", "did", "do", "doing", "don", "down", "each", "few", "for",
    "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself",
    "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more", "most", "mostly",
    "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "or", "other", "others", "our", "ours", "out",
    "over", "own", "re", "s", "same", "she", "should", "so", "some", "such", "t", "than", "that", "the", "their",
    "theirs", "them", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until",
    "up", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "will", "with", "you",
    "your", "yours", "yourself",
])
# fmt: on

_TOKEN = re.compile(r"[^\W_]+")
_STEMMER = snowballstemmer.stemmer("english")


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


@lru_cache(maxsize=65_536)
def _stem(token: str) -> str:
    return str(_STEMMER.stemWord(token))


def tokens(text: str) -> list[str]:
    """Lower-cased, ASCII-folded word tokens, stop words included (positions matter for snippets)."""
    return [t for t in _TOKEN.findall(_fold(text).lower()) if len(t) <= MAX_TOKEN_CHARS]


def terms(text: str) -> list[str]:
    """The index terms of ``text``, in order: tokens without stop words, stemmed."""
    return [_stem(t) for t in tokens(text) if t not in STOPWORDS]


def term_set(texts: Iterable[str | None]) -> set[str]:
    out: set[str] = set()
    for text in texts:
        if text:
            out.update(terms(text))
    return out


def coverage(query_terms: set[str], document_terms: set[str]) -> float:
    """Share of the query's terms the document contains (0 when the query has none)."""
    if not query_terms:
        return 0.0
    return len(query_terms & document_terms) / len(query_terms)

"""Metadata filters: validation and compilation to LanceDB SQL and Milvus boolean expressions.

Semantics, identical on every backend:

* ``{"k": v}`` / ``{"k": {"$eq": v}}``: ``metadata["k"]`` equals ``v``, or is a list that contains ``v``.
  Numbers compare by value (``3 == 3.0``), booleans are not numbers, strings compare exactly.
* ``{"k": {"$in": [v1, v2]}}``: equality with any of the values.
* ``{"k": {"$ne": v}}``: ``metadata["k"]`` is present (not null) and neither equals nor contains ``v``.
* ``{"k": {"$gt"|"$gte"|"$lt"|"$lte": n}}``: ``metadata["k"]`` is a number (not a bool, not a list) in range.
* Several operators under one key, and several keys, are ANDed.
* ``{"$modality": m}`` (``$eq``, ``$in``, ``$ne`` too): the document's modality (``mmsearch_schema.fields``) is
  ``m``. It is what the document stores (text and/or image: read from the content columns, so collections written
  before modalities existed filter right), or for an embedding-only document the modality it declared (a reserved
  filter term, ``0modality_<m>``, which no metadata key can produce: those start with a letter or ``_``).

How: every stored document carries *filter terms*: ``"<key>"`` for each present key and ``"<key>=<digest>"`` for
each scalar value or list element, where the digest is a BLAKE2b-128 hash of a typed canonical form of the
value. Equality, ``$in`` and ``$ne`` test membership of those terms (LanceDB: ``array_has`` on a ``list<string>``
column; Milvus: ``array_contains`` on an ``ARRAY<VARCHAR>`` field). Ranges read the JSON metadata column. The
only literals that ever reach an expression are hex digests, regex-validated keys and Python-formatted finite
numbers, so user text is never interpolated into SQL or Milvus expressions.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mmsearch_schema import fields

from service.index.base import Filter, InvalidFilter

KEY_RE = fields.METADATA_KEY_RE
_SAFE_TERM_RE = re.compile(r"^[A-Za-z0-9_=]+$")
RANGE_OPS: dict[str, str] = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = ("$eq", "$ne", "$in", *RANGE_OPS)
# Cost limits: a filter compiles to one index expression whose cost grows with its terms (measured on both
# backends: ~0.05-0.1 ms per term on 2 vCPUs; 65,536 terms took 7-8 s, 256 terms 15-40 ms).
MAX_FILTER_KEYS = 32
MAX_FILTER_TERMS = 256
"""Conditions of one filter in all: each equality, ``$ne`` and range counts 1, each ``$in`` value 1."""
MAX_FILTER_BYTES = 16_384
"""Keys and string values of one filter, in UTF-8 bytes."""
MAX_TERMS_PER_DOCUMENT = fields.MAX_METADATA_VALUES
MAX_TERM_CHARS = 128  # key (<= 64) + "=" + 32 hex digits
_SQL_QUOTE = "'"
_EXPR_QUOTE = '"'


MODALITY_KEY = fields.MODALITY_FILTER_KEY
MODALITY_VALUES = (*fields.MODALITIES, "")
_MODALITY_TERM = "0modality_"


def modality_term(modality: str) -> str:
    """The reserved filter term an embedding-only document that declares ``modality`` carries."""
    return _MODALITY_TERM + modality.replace("+", "_")


AV_TERMS = {modality_term(m): m for m in fields.AV_MODALITIES}
"""The reserved terms of audio and video rows (their clip is in the ``image`` column: the term says what it is)."""


def stored_modality(text: str | None, image: str | None, terms: Any) -> str:
    """A stored row's modality: an audio or video row's term, else from its content, else the one its reserved
    term declares (``""``: none)."""
    for term in terms or ():
        if term in AV_TERMS:
            return AV_TERMS[term]
    held = fields.modality_of(text, image)
    if held or not terms:
        return held
    for m in fields.MODALITIES:
        if modality_term(m) in terms:
            return m
    return ""


@dataclass(frozen=True)
class Content:
    """How a backend tests which content a stored row holds (boolean expressions in its own language)."""

    has_text: str
    no_text: str
    has_image: str
    no_image: str
    any_term: Callable[[tuple[str, ...]], str]
    """An expression that holds when the row carries any of the given filter terms."""
    conj: str = " AND "
    disj: str = " OR "
    negate: str = "NOT "


def modality_expr(modalities: tuple[str, ...], c: Content) -> str:
    """An expression that holds for rows whose modality is one of ``modalities`` (see the module docstring)."""
    not_av = f"{c.negate}{c.any_term(tuple(AV_TERMS))}"  # an audio or video row keeps its clip in ``image``
    both = {
        "text": (c.has_text, c.no_image),
        "image": (c.has_image, c.no_text, not_av),
        "text+image": (c.has_text, c.has_image, not_av),
    }
    parts = [f"({c.conj.join(both[m])})" for m in modalities if m in both]
    av = tuple(modality_term(m) for m in modalities if m in fields.AV_MODALITIES)
    if av:
        parts.append(f"({c.any_term(av)})")
    empty = c.conj.join((c.no_text, c.no_image))
    declared = tuple(modality_term(m) for m in modalities if m in both)
    if declared:
        parts.append(f"({empty}{c.conj}{c.any_term(declared)})")
    if "" in modalities:
        every = tuple(modality_term(m) for m in fields.MODALITIES)
        parts.append(f"({empty}{c.conj}{c.negate}{c.any_term(every)})")
    return f"({c.disj.join(parts)})"


@dataclass(frozen=True)
class Clause:
    """One condition on one metadata key (or on the document modality: ``op == "modality"``, ``terms`` the
    modalities allowed)."""

    key: str
    op: Literal["eq", "in", "ne", "range", "modality"]
    terms: tuple[str, ...] = ()
    cmp: str = ""
    number: int | float = 0


def _canonical(value: Any) -> str | None:
    """Typed canonical form of a scalar, or None for values that are not filterable scalars."""
    if isinstance(value, bool):
        return "b:true" if value else "b:false"
    if isinstance(value, int):
        return f"n:{value}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return f"n:{int(value)}" if value.is_integer() else f"n:{value!r}"
    if isinstance(value, str):
        return f"s:{value}"
    return None


def value_term(key: str, value: Any) -> str:
    canonical = _canonical(value)
    if canonical is None:
        raise ValueError(f"not a filterable scalar: {value!r}")
    digest = hashlib.blake2b(canonical.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"{key}={digest}"


def document_terms(metadata: Mapping[str, Any], declared_modality: str | None = None) -> list[str]:
    """Filter terms stored with a document (keys that are not valid filter keys are not filterable), and the
    reserved term of the modality an embedding-only document declares."""
    terms: list[str] = [modality_term(declared_modality)] if declared_modality else []
    for key, value in metadata.items():
        if value is None or not isinstance(key, str) or not KEY_RE.fullmatch(key):
            continue
        terms.append(key)
        seen: set[str] = set()
        for item in value if isinstance(value, list | tuple) else (value,):
            if _canonical(item) is None:
                continue
            term = value_term(key, item)
            if term not in seen:
                seen.add(term)
                terms.append(term)
    if len(terms) > MAX_TERMS_PER_DOCUMENT:
        raise ValueError(f"metadata has too many filterable values ({len(terms)} > {MAX_TERMS_PER_DOCUMENT})")
    return terms


def _scalar(key: str, op: str, value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidFilter(f"filter key {key!r}: {op} value must be finite")
    if not isinstance(value, str | int | float | bool):
        raise InvalidFilter(f"filter key {key!r}: {op} value must be a string, number or boolean, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and not fields.INT64[0] <= value <= fields.INT64[1]:
        raise InvalidFilter(f"filter key {key!r}: integers must fit in 64 bits")
    return value


def _number(key: str, op: str, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFilter(f"filter key {key!r}: {op} needs a number, got {value!r}")
    return _scalar(key, op, value)


class _Budget:
    """Counts a filter's terms and bytes while it is parsed; refuses it as soon as either limit is passed."""

    def __init__(self) -> None:
        self.terms = 0
        self.bytes = 0

    def add(self, terms: int = 0, text: str | None = None) -> None:
        self.terms += terms
        if text is not None:
            self.bytes += len(text.encode("utf-8", "surrogatepass"))
        if self.terms > MAX_FILTER_TERMS:
            raise InvalidFilter(
                f"filter has more than {MAX_FILTER_TERMS} conditions and $in values in all (too costly to run)"
            )
        if self.bytes > MAX_FILTER_BYTES:
            raise InvalidFilter(f"filter keys and strings exceed {MAX_FILTER_BYTES} bytes in all")

    def values(self, values: Any) -> None:
        for v in values:
            self.add(1, v if isinstance(v, str) else None)


def parse_filter(filter: Filter | None) -> list[Clause]:
    """Validate a filter and turn it into clauses (all of which must hold); raise ``InvalidFilter``."""
    if filter is None:
        return []
    if not isinstance(filter, Mapping):
        raise InvalidFilter(f"filter must be an object mapping metadata keys to conditions, got {filter!r}")
    if len(filter) > MAX_FILTER_KEYS:
        raise InvalidFilter(f"filter has more than {MAX_FILTER_KEYS} keys (got {len(filter)})")
    budget = _Budget()
    clauses: list[Clause] = []
    for key, cond in filter.items():
        if key == MODALITY_KEY:
            clauses.append(_modality_clause(cond))
            continue
        _check_key(key, budget)
        if isinstance(cond, Mapping):
            clauses += _operator_clauses(key, cond, budget)
        else:
            clauses.append(_equality_clause(key, cond, budget))
    return clauses


def _check_key(key: Any, budget: _Budget) -> None:
    if isinstance(key, str):
        budget.add(text=key[: MAX_FILTER_BYTES + 1])
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise InvalidFilter(f"invalid filter key {key!r}: keys must match {KEY_RE.pattern} (letters, digits, '_')")


def _equality_clause(key: str, value: Any, budget: _Budget) -> Clause:
    """``{"key": value}``: a bare scalar is equality."""
    if isinstance(value, list | tuple):
        raise InvalidFilter(f"filter key {key!r}: a list is not a value; use {{'$in': [...]}}")
    if value is None:
        raise InvalidFilter(f"filter key {key!r}: null is not a filterable value")
    budget.values([value])
    return Clause(key, "eq", (value_term(key, _scalar(key, "equality", value)),))


def _operator_clauses(key: str, cond: Mapping[str, Any], budget: _Budget) -> list[Clause]:
    """``{"key": {"$op": arg, ...}}``: one clause per operator."""
    if not cond:
        raise InvalidFilter(f"filter key {key!r}: empty condition object")
    if len(cond) > len(OPERATORS):
        raise InvalidFilter(f"filter key {key!r}: at most one condition per operator ({', '.join(OPERATORS)})")
    return [_operator_clause(key, op, arg, budget) for op, arg in cond.items()]


def _operator_clause(key: str, op: Any, arg: Any, budget: _Budget) -> Clause:
    if op != "$in":
        budget.values([arg])
    if op == "$eq":
        return Clause(key, "eq", (value_term(key, _scalar(key, op, arg)),))
    if op == "$ne":
        return Clause(key, "ne", (value_term(key, _scalar(key, op, arg)),))
    if op == "$in":
        if not isinstance(arg, list | tuple) or not arg:
            raise InvalidFilter(f"filter key {key!r}: $in needs a non-empty list of scalars")
        budget.values(arg[: MAX_FILTER_TERMS + 1])
        terms = dict.fromkeys(value_term(key, _scalar(key, op, v)) for v in arg)
        return Clause(key, "in", tuple(terms))
    if op in RANGE_OPS:
        return Clause(key, "range", cmp=RANGE_OPS[op], number=_number(key, op, arg))
    raise InvalidFilter(f"filter key {key!r}: unknown operator {op!r} (supported: {', '.join(OPERATORS)})")


def _modality_clause(cond: Any) -> Clause:
    """``{"$modality": m}``, ``{"$modality": {"$eq"|"$ne": m}}`` or ``{"$modality": {"$in": [m, ...]}}``."""
    allowed = ", ".join(repr(m) for m in MODALITY_VALUES)

    def check(value: Any) -> str:
        if value not in MODALITY_VALUES or not isinstance(value, str):
            raise InvalidFilter(f"filter key {MODALITY_KEY!r}: a modality is one of {allowed} (got {value!r})")
        return value

    if not isinstance(cond, Mapping):
        return Clause(MODALITY_KEY, "modality", (check(cond),))
    if len(cond) != 1:
        raise InvalidFilter(f"filter key {MODALITY_KEY!r}: exactly one of $eq, $in, $ne")
    ((op, arg),) = cond.items()
    if op == "$eq":
        return Clause(MODALITY_KEY, "modality", (check(arg),))
    if op == "$ne":
        return Clause(MODALITY_KEY, "modality", tuple(m for m in MODALITY_VALUES if m != check(arg)))
    if op == "$in":
        if not isinstance(arg, list | tuple) or not arg or len(arg) > len(MODALITY_VALUES):
            raise InvalidFilter(f"filter key {MODALITY_KEY!r}: $in needs a list of 1-{len(MODALITY_VALUES)} modalities")
        return Clause(MODALITY_KEY, "modality", tuple(dict.fromkeys(check(v) for v in arg)))
    raise InvalidFilter(f"filter key {MODALITY_KEY!r}: unknown operator {op!r} (supported: $eq, $in, $ne)")


def _number_literal(value: int | float) -> str:
    if isinstance(value, int) and abs(value) < 2**63:
        return str(value)
    return repr(float(value))


def _terms_literal(terms: tuple[str, ...], quote: str) -> str:
    for term in terms:  # defence in depth: terms are generated, never user text
        if not _SAFE_TERM_RE.match(term):
            raise AssertionError(f"unsafe filter term {term!r}")
    return ", ".join(f"{quote}{t}{quote}" for t in terms)


@dataclass(frozen=True)
class _Dialect:
    """How a backend's query language spells the clauses: quotes, array functions, ``and``/``not`` and a
    numeric comparison of a JSON metadata value (``range``: ``(clause, terms, json, key) -> expression``)."""

    quote: str
    has: str
    has_any: str
    and_: str
    not_: str
    range: Callable[[Clause, str, str, str], str]


def _compile(
    clauses: list[Clause],
    d: _Dialect,
    terms: str,
    json: str,
    content: Content | None,
    modality_column: str | None = None,
) -> str | None:
    """The clauses (all must hold) as one expression in dialect ``d`` (None when there are none). ``content``:
    how the collection tells text and image rows apart (None: it cannot, and a modality clause is refused);
    ``modality_column``: a column that stores each row's modality, tested instead where the collection has it."""
    parts: list[str] = []
    for c in clauses:
        if c.op == "modality":  # its terms are modalities, not generated filter terms
            if modality_column is not None:
                parts.append(modality_in(c.terms, modality_column))
                continue
            if content is None:
                raise InvalidFilter(
                    f"filter key {MODALITY_KEY!r}: this collection was written in Milvus format 1, which cannot "
                    "filter by modality (re-create it)"
                )
            parts.append(modality_expr(c.terms, content))
            continue
        values = _terms_literal(c.terms, d.quote)
        key = _terms_literal((c.key,), d.quote)
        if c.op == "eq":
            parts.append(f"{d.has}({terms}, {values})")
        elif c.op == "in":
            parts.append(f"{d.has_any}({terms}, [{values}])")
        elif c.op == "ne":  # the key is present and the value is not among its values
            parts.append(f"({d.has}({terms}, {key}) {d.and_} {d.not_} {d.has}({terms}, {values}))")
        else:
            parts.append(d.range(c, terms, json, key))
    return f" {d.and_} ".join(parts) if parts else None


def _lance_range(c: Clause, terms: str, json: str, key: str) -> str:
    value = f"TRY_CAST(json_extract(json_get({json}, {key}), '$') AS DOUBLE)"
    return f"({value} {c.cmp} {_number_literal(c.number)})"


def _milvus_range(c: Clause, terms: str, json: str, key: str) -> str:
    # Booleans are excluded explicitly: Milvus Lite evaluates JSON comparisons with Python semantics, where
    # True >= 0 holds.
    bools = _terms_literal((value_term(c.key, True), value_term(c.key, False)), _EXPR_QUOTE)
    return f"({json}[{key}] {c.cmp} {_number_literal(c.number)} and not array_contains_any({terms}, [{bools}]))"


_LANCE_SQL = _Dialect(_SQL_QUOTE, "array_has", "array_has_any", "AND", "NOT", _lance_range)
_MILVUS_EXPR = _Dialect(_EXPR_QUOTE, "array_contains", "array_contains_any", "and", "not", _milvus_range)


def lance_content(terms_column: str) -> Content:
    return Content(
        has_text="text IS NOT NULL",
        no_text="text IS NULL",
        has_image="image IS NOT NULL",
        no_image="image IS NULL",
        any_term=lambda terms: f"array_has_any({terms_column}, [{_terms_literal(terms, _SQL_QUOTE)}])",
    )


def milvus_content(terms_field: str, has_text: str, has_image: str) -> Content:
    """Content tests on a Milvus collection that records which content a row has in two BOOL fields."""
    return Content(
        has_text=f"{has_text} == true",
        no_text=f"{has_text} == false",
        has_image=f"{has_image} == true",
        no_image=f"{has_image} == false",
        any_term=lambda terms: f"array_contains_any({terms_field}, [{_terms_literal(terms, _EXPR_QUOTE)}])",
        conj=" and ",
        disj=" or ",
        negate="not ",
    )


def modality_in(modalities: tuple[str, ...], column: str) -> str:
    """``column`` (a stored modality, ``stored_modality`` of the row) holds one of ``modalities``: a comparison a
    scalar index answers, where the content tests of ``modality_expr`` make a prefilter read every row."""
    for m in modalities:  # defence in depth: parse_filter admits only these
        if m not in MODALITY_VALUES:
            raise AssertionError(f"unknown modality {m!r}")
    values = ", ".join(f"{_SQL_QUOTE}{m}{_SQL_QUOTE}" for m in modalities)
    return f"({column} = {values})" if len(modalities) == 1 else f"({column} IN ({values}))"


def to_lance_sql(
    clauses: list[Clause], *, terms_column: str, json_column: str, modality_column: str | None = None
) -> str | None:
    """A LanceDB ``where`` predicate for the clauses (None when there are none). ``modality_column``: the table's
    stored modality column, where it has one (a ``$modality`` clause then tests it instead of the content)."""
    return _compile(clauses, _LANCE_SQL, terms_column, json_column, lance_content(terms_column), modality_column)


def to_milvus_expr(
    clauses: list[Clause], *, terms_field: str, json_field: str, content: Content | None = None
) -> str | None:
    """A Milvus boolean expression for the clauses (None when there are none). ``content``: how the collection
    tells text and image rows apart (None: it cannot, and a modality clause is refused)."""
    return _compile(clauses, _MILVUS_EXPR, terms_field, json_field, content)

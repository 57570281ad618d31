"""Document modality (issue #22): derived from the content, declared only by embedding-only documents, and the
``$modality`` filter compiled for each backend (the backends themselves: tests/test_index_contract.py)."""

from __future__ import annotations

import pytest
from mmsearch_client import fields
from mmsearch_client.schemas import UpsertDocument
from pydantic import ValidationError

from service.index import filters


def test_modality_follows_the_content_and_an_embedding_only_document_may_declare_one() -> None:
    assert fields.modality_of("t", None) == "text"
    assert fields.modality_of(None, "i.png") == "image"
    assert fields.modality_of("t", "i.png", "image") == "text+image"
    assert fields.modality_of(None, None, "image") == "image"
    assert fields.modality_of(None, None) == ""
    assert UpsertDocument(id="a", embedding=[1.0], modality="image").modality == "image"
    assert UpsertDocument(id="b", text="t", modality="text").modality == "text"


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"id": "a", "text": "t", "modality": "image"}, "contradicts"),
        ({"id": "a", "embedding": [1.0], "modality": "audio"}, "modality"),
    ],
)
def test_a_declared_modality_must_be_known_and_agree_with_the_content(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        UpsertDocument.model_validate(doc)


def test_the_declared_modality_is_a_reserved_term_no_metadata_key_can_produce() -> None:
    term = filters.modality_term("text+image")
    assert term in filters.document_terms({"lang": "en"}, "text+image")
    assert not fields.METADATA_KEY_RE.fullmatch(term.split("=")[0])
    assert filters.stored_modality(None, None, [term]) == "text+image"
    assert filters.stored_modality("t", None, [term]) == "text"


def test_modality_clauses_compile_to_content_tests_on_both_backends() -> None:
    clauses = filters.parse_filter({"$modality": {"$in": ["image", ""]}, "lang": "en"})
    sql = filters.to_lance_sql(clauses, terms_column="_terms", json_column="metadata")
    assert sql is not None and "image IS NOT NULL AND text IS NULL" in sql and "NOT array_has_any" in sql
    content = filters.milvus_content("terms", "has_text", "has_image")
    expr = filters.to_milvus_expr(clauses, terms_field="terms", json_field="metadata", content=content)
    assert expr is not None and "has_image == true and has_text == false" in expr
    with pytest.raises(filters.InvalidFilter, match="format 1"):
        filters.to_milvus_expr(clauses, terms_field="terms", json_field="metadata")

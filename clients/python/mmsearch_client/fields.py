"""Rules for what a collection may store: names, ids, texts, image references and metadata.

Defined once, in the ``mmsearch-schema`` distribution (:mod:`mmsearch_schema.fields`), which the wire models and the
services' index layer apply; this module re-exports them (the same objects), so the client can check a document
before sending it.
"""

from mmsearch_schema.fields import (
    AV_MODALITIES,
    COLLECTION_NAME_RE,
    INT64,
    MAX_ID_CHARS,
    MAX_METADATA_BYTES,
    MAX_METADATA_KEYS,
    MAX_METADATA_LIST,
    MAX_METADATA_VALUES,
    MAX_STORED_TEXT_BYTES,
    METADATA_KEY_RE,
    MODALITIES,
    MODALITY_FILTER_KEY,
    check_av_ref,
    check_collection_name,
    check_declared_modality,
    check_id,
    check_metadata,
    check_stored_text,
    modality_of,
)

__all__ = [
    "AV_MODALITIES",
    "COLLECTION_NAME_RE",
    "INT64",
    "MAX_ID_CHARS",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_LIST",
    "MAX_METADATA_VALUES",
    "MAX_STORED_TEXT_BYTES",
    "METADATA_KEY_RE",
    "MODALITIES",
    "MODALITY_FILTER_KEY",
    "check_av_ref",
    "check_collection_name",
    "check_declared_modality",
    "check_id",
    "check_metadata",
    "check_stored_text",
    "modality_of",
]

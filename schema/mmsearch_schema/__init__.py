"""mmsearch wire schema: what the services and the client agree on, and nothing else (it depends only on pydantic).

* :mod:`mmsearch_schema.wire`: the request and response models of the native HTTP API (``Item``,
  ``SearchRequest``, ``SearchResponse``, ...).
* :mod:`mmsearch_schema.fields`: what a collection may store (names, ids, texts, metadata, modalities), one rule
  applied by the wire models and by every index backend.
* :mod:`mmsearch_schema.errors`: error bodies read back as ``(message, code, field)``, and ``loc`` <-> ``field``
  paths.

The services import it; the client (``mmsearch-client``) depends on it and re-exports it
(``mmsearch_client.schemas``, ``mmsearch_client.fields``).
"""

__version__ = "0.1.0"
"""The distribution's version (``schema/pyproject.toml`` says the same; the client pins it)."""

__all__ = ["__version__"]

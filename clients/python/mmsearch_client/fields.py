"""Rules for what a collection may store: names, ids, texts, image references and metadata.

Defined once, in the ``mmsearch-schema`` distribution (:mod:`mmsearch_schema.fields`), which the wire models and the
services' index layer apply; this module re-exports them (the same objects), so the client can check a document
before sending it.
"""

from mmsearch_schema.fields import *  # noqa: F403 (every public name, the same objects)
from mmsearch_schema.fields import __all__ as __all__

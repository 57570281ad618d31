"""The mmsearch wire schema, as the client's public API: request and response models (``Item``, ``SearchRequest``,
``SearchResponse``, ...).

They are defined once, in the ``mmsearch-schema`` distribution (:mod:`mmsearch_schema.wire`), which the services
import too; this module re-exports them (the same classes), so ``from mmsearch_client.schemas import ...`` keeps
working.
"""

from mmsearch_schema.wire import *  # noqa: F403 (every public name, the same objects)
from mmsearch_schema.wire import __all__ as __all__

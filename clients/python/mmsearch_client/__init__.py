"""mmsearch client: typed access to the mmsearch multimodal retrieval service."""

from mmsearch_client.schemas import Item

__all__ = ["Item"]

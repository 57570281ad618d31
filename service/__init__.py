"""mmsearch services: Embedder, Reranker and Search (BentoML) and what they share."""

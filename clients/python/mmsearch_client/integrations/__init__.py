"""RAG framework retrievers over mmsearch ``/search``: :mod:`.langchain` (``pip install
'mmsearch-client[langchain]'``) and :mod:`.llamaindex` (``pip install 'mmsearch-client[llamaindex]'``)."""

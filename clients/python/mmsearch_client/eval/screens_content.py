"""The words on the screenshots of :mod:`mmsearch_client.eval.screens`, and what each page is about.

Every page has a ``paraphrase``: what someone looking for it might type, written without the page's own content
words (a few function words and generic nouns overlap, as they would in real queries). Distractor texts are
built from other topics in the same genres, so keyword search meets the same generic vocabulary ("revenue",
"total", "settings", "account") in documents that are not the answer.

The texts are data, kept in ``screens_content.json`` beside this module (a page is a JSON object; a tile, receipt
item or settings option a ``[label, value]`` pair) and read once, at import.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

Page = dict[str, Any]

_CONTENT: dict[str, Any] = json.loads(resources.files(__package__).joinpath("screens_content.json").read_text("utf-8"))

DASHBOARDS: list[Page] = _CONTENT["dashboards"]
SLIDES: list[Page] = _CONTENT["slides"]
RECEIPTS: list[Page] = _CONTENT["receipts"]
SETTINGS: list[Page] = _CONTENT["settings"]
SCANS: list[Page] = _CONTENT["scans"]
DISTRACTOR_TOPICS: list[str] = _CONTENT["distractor_topics"]
DISTRACTOR_TEMPLATES: list[str] = _CONTENT["distractor_templates"]

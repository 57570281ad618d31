"""Test fixtures about the process environment."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def no_mmsearch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: no ``MMSEARCH_*`` variable of the calling shell (autouse where it is imported)."""
    for key in list(os.environ):
        if key.upper().startswith("MMSEARCH_"):
            monkeypatch.delenv(key)

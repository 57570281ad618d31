"""An optional progress bar: rich's when it is installed and wanted, else nothing."""

from __future__ import annotations

import importlib.util
from types import TracebackType
from typing import Any, Protocol

__all__ = ["ProgressBar", "make_progress", "rich_available"]


def rich_available() -> bool:
    return importlib.util.find_spec("rich") is not None


class ProgressBar(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def set_description(self, text: str) -> None: ...

    def __enter__(self) -> ProgressBar: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class _NoProgress:
    def advance(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass


class _RichProgress:
    def __init__(self, total: int | None, description: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
        columns += [MofNCompleteColumn(), TimeElapsedColumn()]
        if total is not None:
            columns.append(TimeRemainingColumn())
        self._progress = Progress(*columns, console=Console(stderr=True), transient=False)
        self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def set_description(self, text: str) -> None:
        self._progress.update(self._task, description=text)

    def __enter__(self) -> _RichProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()


def make_progress(enabled: bool, total: int | None, description: str) -> ProgressBar:
    """A rich progress bar on stderr if ``enabled`` and rich is installed, else a no-op."""
    if enabled and rich_available():
        return _RichProgress(total, description)
    return _NoProgress()

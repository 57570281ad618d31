"""Workers end with their server: no BentoML worker outlives the process that started it.

``bentoml serve`` runs a circus arbiter that starts one process per service worker, each in its own session. A
signal to the arbiter's process group therefore never reaches the workers, and if the arbiter dies without
stopping them (``kill -9``, an OOM kill, ``kill -9 -<pgid>``) they keep serving the port as orphans. So every
worker, at start, asks the kernel to send it SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``) and runs a
watchdog thread that notices the same on any OS: once the parent is gone it sends SIGTERM to the worker itself
(uvicorn then shuts down gracefully) and, if the worker is still alive ``grace_s`` later, SIGKILL.

Only worker processes do this (BentoML sets ``server_context.worker_index`` in them); the arbiter and processes
that import a service in-process are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("mmsearch.lifetime")

PR_SET_PDEATHSIG = 1
GRACE_S = 15.0
_installed = False


def _is_worker() -> bool:
    try:
        from bentoml._internal.context import server_context
    except ImportError:
        return False
    return server_context.worker_index is not None


def _set_pdeathsig() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _watch(parent: int, grace_s: float, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    log.warning("the server process (pid %d) is gone: this worker stops", parent)
    with contextlib.suppress(ProcessLookupError):
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os.kill(os.getpid(), signal.SIGKILL)


def bind_to_parent(grace_s: float = GRACE_S, poll_s: float = 0.5) -> None:
    """End this process when its parent dies: SIGTERM at once, SIGKILL ``grace_s`` later."""
    parent = os.getppid()
    _set_pdeathsig()
    if os.getppid() != parent:  # the parent died before the kernel could be told
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch, args=(parent, grace_s, poll_s), name="parent-watchdog", daemon=True).start()


def install() -> None:
    """``bind_to_parent()`` in BentoML worker processes (idempotent)."""
    global _installed
    if _installed or not _is_worker():
        return
    _installed = True
    bind_to_parent()

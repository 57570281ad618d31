"""Fatal start-up errors stop the whole server, with one line and a non-zero exit status.

BentoML's process manager (circus) restarts a worker that dies, forever: a model that cannot load would print a
traceback per restart while ``/readyz`` stays 503. Instead:

- :func:`arm` runs in the server's main process (a ``@bentoml.on_deployment`` hook, before any worker starts): it
  exports the main process id and a marker file path to the workers, and makes the main process exit with
  :data:`EXIT_STATUS` if a worker left the marker;
- :func:`fatal` runs in a worker that cannot start: it logs the one line, leaves the marker, asks the main process
  to stop (SIGTERM: every worker is shut down as usual) and exits.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

log = logging.getLogger("mmsearch")

EXIT_STATUS = 3
_PID_VAR = "MMSEARCH_INTERNAL_MAIN_PID"
_MARKER_VAR = "MMSEARCH_INTERNAL_FATAL_FILE"


def arm() -> None:
    """In the main process: let workers stop the server with a non-zero status (idempotent)."""
    if os.environ.get(_PID_VAR) == str(os.getpid()):
        return
    marker = Path(tempfile.mkdtemp(prefix="mmsearch-")) / "fatal"
    os.environ[_PID_VAR] = str(os.getpid())
    os.environ[_MARKER_VAR] = str(marker)
    atexit.register(_exit_if_fatal, marker)


def _exit_if_fatal(marker: Path) -> None:
    if marker.exists():
        line = marker.read_text(errors="replace").strip()
        print(f"mmsearch: stopped: {line}", file=sys.stderr, flush=True)
        os._exit(EXIT_STATUS)


def fatal(message: str) -> NoReturn:
    """In a worker: log ``message`` (one line), stop the server, exit. Without a main process to stop (no
    ``arm``), raise ``SystemExit`` instead."""
    line = " ".join(message.split())
    log.error(line)
    pid, marker = os.environ.get(_PID_VAR), os.environ.get(_MARKER_VAR)
    if not pid or not marker or int(pid) == os.getpid():
        raise SystemExit(line)
    try:
        with open(marker, "x") as f:  # the first failure is the one reported (others follow from the stop)
            f.write(line + "\n")
    except FileExistsError:
        pass
    except OSError as e:
        log.error("could not record the failure: %s", e)
    try:
        os.kill(int(pid), signal.SIGTERM)
    except OSError as e:  # main process gone or marker dir removed: still exit
        log.error("could not stop the server process %s: %s", pid, e)
    logging.shutdown()
    os._exit(EXIT_STATUS)

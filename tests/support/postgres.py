"""A real PostgreSQL server for the tests and benchmarks, on 127.0.0.1 and a free port.

From the Debian ``postgresql`` package's binaries (``SERVE_DRIFT_PG_BIN``, else
``pg_config --bindir``, else the newest ``/usr/lib/postgresql/*/bin``): ``initdb`` into a fresh
temporary folder, run as an unprivileged user when this process is root (PostgreSQL refuses to
run as root), password authentication only, stopped and removed afterwards. Missing binaries
raise :class:`PostgresUnavailable` with what to install: a test fails with it, never skips.

    with PostgresServer.started() as server:
        dsn = server.dsn()
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.serve import free_port

ADMIN = "serve_drift_admin"
USER = "serve_drift"
DATABASE = "serve_drift"
UNPRIVILEGED = "nobody"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here."""


def find_bindir() -> Path:
    candidates = [os.environ.get("SERVE_DRIFT_PG_BIN", "")]
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(found.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)
    for candidate in candidates:
        if candidate and all((Path(candidate) / b).exists() for b in ("initdb", "pg_ctl")):
            return Path(candidate)
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package "
        "'postgresql' (.ci/run does), or point SERVE_DRIFT_PG_BIN at their folder"
    )


def _major(path: str) -> int:
    version = Path(path).parent.name
    return int(version) if version.isdigit() else 0


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int
    admin_password: str
    password: str

    @classmethod
    @contextlib.contextmanager
    def started(cls, *, fsync: bool = False) -> Iterator[PostgresServer]:
        """``fsync=False`` for tests (they kill clients, never the server's machine)."""
        root = Path(tempfile.mkdtemp(prefix="serve-drift-pg-"))
        server = cls(find_bindir(), root, free_port(), secrets.token_hex(12), secrets.token_hex(12))
        try:
            server._initdb(fsync=fsync)
            server._ctl("start", "-w", "-t", "60", "-l", str(root / "server.log"))
            server._create_user()
            yield server
        finally:
            with contextlib.suppress(Exception):
                server._ctl("stop", "-m", "fast", "-w", "-t", "60")
            shutil.rmtree(root, ignore_errors=True)

    # --- running the server -------------------------------------------------------------------

    def _as_owner(self, *command: str) -> list[str]:
        if os.geteuid() != 0:
            return list(command)
        return ["runuser", "-u", UNPRIVILEGED, "--", *command]

    def _initdb(self, *, fsync: bool) -> None:
        if os.geteuid() == 0:  # the data folder must belong to the user the server runs as
            user = pwd.getpwnam(UNPRIVILEGED)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        password_file = self.root / "pw"
        password_file.write_text(self.admin_password + "\n")
        if os.geteuid() == 0:
            os.chown(password_file, pwd.getpwnam(UNPRIVILEGED).pw_uid, -1)
        data = self.root / "data"
        subprocess.run(
            self._as_owner(
                str(self.bindir / "initdb"), "-D", str(data), "-U", ADMIN, "-E", "UTF8",
                "--auth=scram-sha-256", f"--pwfile={password_file}", "--no-sync",
            ),
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        password_file.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "on" if fsync else "off",
            "max_connections": "200",
        }
        with (data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _ctl(self, *args: str) -> None:
        command = self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), *args)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"pg_ctl {args[0]} failed: {done.stderr}\n{tail}")

    def _create_user(self) -> None:
        with self.admin() as db:
            db.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{self.password}'")
            db.execute(f"CREATE DATABASE {DATABASE} OWNER {USER}")

    # --- connecting ---------------------------------------------------------------------------

    def admin_dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{ADMIN}:{self.admin_password}@127.0.0.1:{self.port}/{database}"

    def dsn(self, *, user: str = USER, password: str | None = None) -> str:
        """The DSN a store uses: a role that is no superuser, in the test database."""
        secret = self.password if password is None else password
        return f"postgresql://{user}:{secret}@127.0.0.1:{self.port}/{DATABASE}"

    @contextlib.contextmanager
    def admin(self, database: str = "postgres") -> Iterator[Any]:
        import psycopg

        with psycopg.connect(self.admin_dsn(database), autocommit=True) as db:
            yield db

    def new_database(self) -> str:
        """A fresh, empty database the store's role owns: its DSN."""
        name = f"db_{uuid.uuid4().hex[:10]}"
        with self.admin() as db:
            db.execute(f"CREATE DATABASE {name} OWNER {USER}")
        return self.dsn().rsplit("/", 1)[0] + f"/{name}"

    def new_role(self) -> tuple[str, str]:
        """A fresh login role that may create schemas in the test database: (name, DSN)."""
        name, password = f"sd_{uuid.uuid4().hex[:10]}", secrets.token_hex(12)
        with self.admin(DATABASE) as db:
            db.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
            db.execute(f"GRANT CREATE ON DATABASE {DATABASE} TO {name}")
        return name, self.dsn(user=name, password=password)


def new_schema() -> str:
    """A schema name no other test uses."""
    return f"t_{uuid.uuid4().hex[:12]}"

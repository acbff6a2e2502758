"""The pgbench yardstick: single-row commits (one INSERT per transaction) on the same server."""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .common import percentile, pgbench_path

SCRIPT = "insert into yardstick.pgbench_commits (v) values (1);\n"


@dataclass(frozen=True)
class Pgbench:
    clients: int
    tps: float
    p50: float  # seconds
    p99: float
    mean: float


def run(dsn: str, clients: int, seconds: int) -> Pgbench | None:
    """``pgbench -c clients -T seconds`` of the one-INSERT script; None when there is no pgbench."""
    binary = pgbench_path()
    if binary is None:
        return None
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create schema if not exists yardstick")
        conn.execute(
            "create table if not exists yardstick.pgbench_commits (id bigserial primary key, v integer)"
        )
    with tempfile.TemporaryDirectory(prefix="oq-pgbench-") as tmp:
        script = Path(tmp) / "commit.sql"
        script.write_text(SCRIPT)
        command = [binary, "-n", "-f", str(script), "-c", str(clients), "-j", str(min(clients, 2))]
        command += ["-T", str(seconds), "-l", "--log-prefix", str(Path(tmp) / "log"), dsn]
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp, timeout=seconds + 60)
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed: {done.stderr.strip()}")
        latencies = [
            int(line.split()[2]) / 1e6
            for log in Path(tmp).glob("log.*")
            for line in log.read_text().splitlines()
            if line.strip()
        ]
    match = re.search(r"tps = ([0-9.]+)", done.stdout)
    tps = float(match.group(1)) if match else len(latencies) / seconds
    return Pgbench(
        clients,
        tps,
        percentile(latencies, 50),
        percentile(latencies, 99),
        sum(latencies) / len(latencies),
    )

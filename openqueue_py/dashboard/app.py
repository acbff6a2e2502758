"""The dashboard application: Starlette routes, Jinja2 templates, htmx partials.

Pages: ``/`` (queues, their counts and the throughput chart; the counts
refresh every 2 s), ``/queues/{name}`` (a queue's newest jobs), ``/dead``
(the dead letters with their error history), ``/jobs/{id}`` (one job).
``/metrics`` serves Prometheus text. With ``allow_actions`` the pages show
replay and cancel buttons, which POST to ``/jobs/{id}/replay`` and
``/jobs/{id}/cancel``; without it those answer 403 and no button is shown.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg.conninfo import conninfo_to_dict
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..client_async import AsyncClient
from ..metrics import FamiliesCollector, queue_families
from . import queries
from .chart import throughput_svg

HERE = Path(__file__).resolve().parent
LIST_LIMIT = 100
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_MAX_BIGINT = 2**63 - 1


def _ts(value: datetime | None) -> str:
    """A timestamp as UTC, to the second."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    """``4 s``, ``3 min 20 s``, ``2 h 5 min``, ``3 d 4 h``; an em dash for None."""
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _ago(value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = (datetime.now(UTC) - value).total_seconds()
    if -1 < seconds < 1:
        return "just now"
    if seconds < 0:
        return f"in {_duration(-seconds)}"
    return f"{_duration(seconds)} ago"


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def _first_line(text: Any) -> str:
    """An error's gist: its first line, or a traceback's last (the exception)."""
    lines = [line for line in str(text or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1].strip() if lines[0].startswith("Traceback") else lines[0]


def _ts_text(value: Any) -> str:
    """An ISO timestamp stored as text (an error's "at") like _ts; unchanged if it does not parse."""
    try:
        return _ts(datetime.fromisoformat(str(value)))
    except ValueError:
        return str(value)


def _database_label(dsn: str) -> str:
    """``dbname @ host:port`` for the header, never the password."""
    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "database"
    host = parts.get("host") or "local socket"
    if str(host).startswith("/"):
        host = "local socket"
    port = parts.get("port")
    where = f"{host}:{port}" if port else str(host)
    return f"{parts.get('dbname') or parts.get('user') or 'postgres'} @ {where}"


class _SecurityHeaders:
    """No framing (the buttons must not be clickjacked), no sniffing, no referrer to other sites."""

    _HEADERS = (
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    )

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self._HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(dsn: str, allow_actions: bool = False, *, pool_size: int = 4) -> Starlette:
    """The dashboard as an ASGI application (serve it with any ASGI server)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters.update(
        ts=_ts, ago=_ago, duration=_duration, pretty=_pretty_json, first_line=_first_line, ts_text=_ts_text
    )
    env.globals.update(allow_actions=allow_actions, database=_database_label(dsn), states=queries.STATES)
    client = AsyncClient(dsn, min_size=1, max_size=pool_size)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.close()

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context.setdefault("base", request.scope.get("root_path", ""))
        context.setdefault("page", "")
        response = templates.TemplateResponse(request, name, context, status_code=status_code)
        return response

    async def overview_context() -> dict[str, Any]:
        async with client.connection() as conn:
            rows = await queries.queues(conn)
        totals = {state: sum(q.counts[state] for q in rows) for state in queries.STATES}
        return {"queues": rows, "totals": totals, "refreshed": datetime.now(UTC)}

    async def chart_context() -> dict[str, Any]:
        async with client.connection() as conn:
            minutes = await queries.throughput(conn)
        return {
            "chart": throughput_svg(minutes),
            "done_hour": sum(m.completed for m in minutes),
            "failed_hour": sum(m.failures for m in minutes),
            "peak": max((m.completed for m in minutes), default=0),
        }

    async def index(request: Request) -> Response:
        return render(
            request, "index.html", page="overview", **await overview_context(), **await chart_context()
        )

    async def partial_queues(request: Request) -> Response:
        return render(request, "_queues.html", **await overview_context())

    async def partial_throughput(request: Request) -> Response:
        return render(request, "_throughput.html", **await chart_context())

    def queue_param(value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not _QUEUE_NAME.match(value):
            raise HTTPException(404, f"no queue named {value!r}")
        return value

    async def dead(request: Request) -> Response:
        queue = queue_param(request.query_params.get("queue"))
        async with client.connection() as conn:
            jobs = await queries.dead_jobs(conn, queue, LIST_LIMIT)
            rows = await queries.queues(conn)
        total = sum(q.counts["dead"] for q in rows if queue is None or q.name == queue)
        return render(
            request,
            "dead.html",
            page="dead",
            jobs=jobs,
            queue=queue,
            total=total,
            limit=LIST_LIMIT,
            queue_names=[q.name for q in rows if q.counts["dead"]],
        )

    async def queue_page(request: Request) -> Response:
        name = queue_param(request.path_params["name"])
        state = request.query_params.get("state") or None
        if state is not None and state not in queries.STATES:
            raise HTTPException(404, f"no state named {state!r}")
        async with client.connection() as conn:
            rows = [q for q in await queries.queues(conn) if q.name == name]
            if not rows:
                raise HTTPException(404, f"no queue named {name!r}")
            jobs = await queries.recent_jobs(conn, name, state, LIST_LIMIT)
        return render(
            request, "queue.html", page="overview", queue=rows[0], jobs=jobs, state=state, limit=LIST_LIMIT
        )

    def job_id_param(request: Request) -> int:
        job_id = request.path_params["job_id"]
        if job_id > _MAX_BIGINT:
            raise HTTPException(404, f"no job {job_id}")
        return job_id

    async def job_page(request: Request) -> Response:
        job_id = job_id_param(request)
        async with client.connection() as conn:
            job = await queries.job(conn, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return render(request, "job.html", page="job", job=job, done=request.query_params.get("done"))

    def check_action(request: Request) -> None:
        if not allow_actions:
            raise HTTPException(403, "actions are disabled: start the dashboard with --allow-actions")
        # A page on another site must not drive the buttons (CSRF).
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise HTTPException(403, "cross-site request refused")
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            raise HTTPException(403, "cross-origin request refused")

    async def action(request: Request, name: str) -> Response:
        check_action(request)
        job_id = job_id_param(request)
        async with client.connection() as conn:
            job = await queries.job(conn, job_id)
            if job is None:
                raise HTTPException(404, f"no job {job_id}")
            done = await (client.replay if name == "replay" else client.cancel)(job_id, conn=conn)
        if not done:
            allowed = "dead or cancelled" if name == "replay" else "pending, failed or processing"
            raise HTTPException(409, f"job {job_id} is {job['status']}: only {allowed} jobs can be {name}ed")
        past = "replayed" if name == "replay" else "cancelled"
        return RedirectResponse(f"{request.scope.get('root_path', '')}/jobs/{job_id}?done={past}", 303)

    async def replay(request: Request) -> Response:
        return await action(request, "replay")

    async def cancel(request: Request) -> Response:
        return await action(request, "cancel")

    async def metrics(request: Request) -> Response:
        async with client.connection() as conn:
            rows = await queries.queues(conn)
            last_hour = await queries.completed_last_hour(conn)
        body = generate_latest(FamiliesCollector(queue_families(rows, last_hour)))  # type: ignore[arg-type]
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path == "/metrics":
            return Response(f"{exc.detail}\n", status_code=exc.status_code, media_type="text/plain")
        return render(
            request, "error.html", status_code=exc.status_code, status=exc.status_code, message=exc.detail
        )

    app = Starlette(
        middleware=[Middleware(_SecurityHeaders)],
        routes=[
            Route("/", index),
            Route("/partials/queues", partial_queues),
            Route("/partials/throughput", partial_throughput),
            Route("/dead", dead),
            Route("/queues/{name}", queue_page),
            Route("/jobs/{job_id:int}", job_page),
            Route("/jobs/{job_id:int}/replay", replay, methods=["POST"]),
            Route("/jobs/{job_id:int}/cancel", cancel, methods=["POST"]),
            Route("/metrics", metrics),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.client = client
    app.state.allow_actions = allow_actions

    return app

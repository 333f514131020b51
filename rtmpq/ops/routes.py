"""OpsRoutes: the operator's routes on every node's HTTP listener.

    GET /                    status page: live broadcasts, their tracks, bitrate, viewers, a player link
    GET /metrics             Prometheus text exposition (rtmpq/ops/metrics.py)
    GET /healthz             200 while the process runs its event loop
    GET /readyz              200 when listening (and, for a relay or an edge, its upstream answers; with a
                             directory, Redis has answered since start), else 503
    GET /api/v1/broadcasts   {"items": [{"name", "tracks": [{"name", "codec", "width", "height",
                             "bitrate"}], "started", "subscribers", "viewers", "publishing",
                             "not_carried": [{"kind", "codec", "flv", "carried", "reason"}]}]}
                             (not_carried: tracks the publisher sends in a codec that is not
                             carried, dropped at this node's ingest)
"""

import json
from importlib import resources

from ..http import Request, Response
from .metrics import CONTENT_TYPE, NodeMetrics
from .view import NodeView

JSON = "application/json"


def _json(status: int, value) -> Response:
    return Response(status, json.dumps(value, separators=(",", ":")).encode(), JSON)


class OpsRoutes:
    def __init__(self, view: NodeView) -> None:
        self.view = view
        self.metrics = NodeMetrics(view)
        self._page: bytes | None = None

    def status_page(self) -> bytes:
        """The page (package data, so it is there however rtmpq was installed); player links
        only where this node serves the player (an edge)."""
        if self._page is None:
            html = resources.files(__package__).joinpath("static/status.html").read_text("utf-8")
            self._page = html.replace("{{player}}", "1" if self.view.edge is not None else "0").encode()
        return self._page

    def start(self) -> None:
        self.metrics.start()

    def stop(self) -> None:
        self.metrics.stop()

    async def __call__(self, request: Request) -> Response | None:
        """The response for an operator's route, or None for any other path."""
        path = request.path
        if path not in ("/", "/index.html", "/metrics", "/healthz", "/readyz", "/api/v1/broadcasts"):
            return None
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"only GET and HEAD\n")
        if path == "/metrics":
            for refresh in list(self.view.refreshers):  # readings fetched from elsewhere (a child process)
                await refresh()
            return Response(200, self.metrics.exposition(), CONTENT_TYPE)
        if path == "/healthz":
            return _json(200, {"status": "ok"})
        if path == "/readyz":
            ready, reason = self.view.ready()
            return _json(200 if ready else 503, {"ready": ready, "reason": reason})
        if path == "/api/v1/broadcasts":
            return _json(200, self.view.api_broadcasts())
        return Response(200, self.status_page(), "text/html; charset=utf-8", "no-cache")


def ops_only(routes: OpsRoutes):
    """A listener's whole application when the node serves nothing but the operator's routes."""

    async def handle(request: Request) -> Response:
        response = await routes(request)
        return response if response is not None else Response(404, b"not found\n")

    return handle

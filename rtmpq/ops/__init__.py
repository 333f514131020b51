"""What operators read from a node's HTTP listener.

    view.py      NodeView: what one node holds (broadcasts, sessions, listeners), read at scrape time
    metrics.py   the Prometheus collector (a registry per node) and the event-loop lag monitor
    probe.py     UpstreamProbe: is the node above reachable (for /readyz of an edge)
    routes.py    OpsRoutes: GET /, /metrics, /healthz, /readyz, /api/v1/broadcasts
    static/      the status page
"""

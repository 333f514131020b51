"""[publish] hook_url: the operator's own service decides the publishes that neither
``[publish.keys]`` nor a token admits (nginx-rtmp's on_publish, with a JSON answer). Sans-I/O:
what is asked, and what an answer means; the ingest makes the call.

The ingest POSTs ``{"app", "key", "query", "address"}`` (the stream key goes to the operator's
service, whose job it is to know it; nowhere else). A 2xx answer ``{"name": "studio"}`` admits
the publish as ``app/studio`` (``"news/desk"`` is taken whole); any other status refuses it, with
the answer's ``"reason"`` told to the publisher when it is short printable text. No answer in
time, or an answer that names no valid broadcast, refuses it too: the hook is the gate.
"""

import json

from .access import BROADCAST_NAME_PATTERN, AccessDenied

# Characters of a hook's "reason" passed on to the publisher and the log, at most.
MAX_HOOK_REASON = 120


def hook_payload(app: str, key: str, query: str, address: str) -> dict:
    return {"app": app, "key": key, "query": query, "address": address}


def hook_name(status: int, body: bytes, app: str) -> str:
    """The public name a hook's answer gives the publish, or AccessDenied (``hook_refused``: the
    hook said no; ``hook_failed``: the answer is not one)."""
    try:
        answer = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: arrays or objects nested too deep
        answer = None
    if not 200 <= status <= 299:
        reason = answer.get("reason") if isinstance(answer, dict) else None
        if isinstance(reason, str) and reason.isprintable() and 0 < len(reason) <= MAX_HOOK_REASON:
            raise AccessDenied(f"refused by the publish hook: {reason}", "hook_refused")
        raise AccessDenied(f"refused by the publish hook (HTTP {status})", "hook_refused")
    name = answer.get("name") if isinstance(answer, dict) else None
    if not isinstance(name, str):
        raise AccessDenied('the publish hook answered without a "name"', "hook_failed")
    path = name if "/" in name else f"{app}/{name}"
    if not BROADCAST_NAME_PATTERN.fullmatch(path) or {".", ".."} & set(path.split("/")):
        raise AccessDenied("the publish hook answered with a name that is not a broadcast name", "hook_failed")
    return path

"""MSF catalog delta updates (specs/draft-ietf-moq-msf.md, "Delta update", "Delta updates"):
apply one to the catalog document it changes.

A delta holds ``deltaUpdate`` (operations applied in order, each on the result of the last) and
``generatedAt``, and no other field of the draft's root table (private fields are ignored, as MSF
asks of fields a parser does not understand). Operations, each with a ``tracks`` array:

- ``add``: tracks whose name is new;
- ``remove``: tracks named (``name``, optional ``namespace``) and nothing else;
- ``clone``: a new track (``name``) with every field of its parent (``parentName``, optional
  ``parentNamespace``), the fields given overriding the parent's;
- ``update``: the fields given override those of the track ``parentName`` names (the draft's own
  example names it with ``name``, so that is read too).

A track is known by namespace and name; no namespace means the catalog's own. The work is done on
the JSON document, so every field (ours or not) is kept, cloned and updated; the initDataList stays
the independent catalog's (a delta may not carry one). Anything malformed raises
RemoteProtocolError and leaves the document as it was.
"""

import copy

from ..errors import RemoteProtocolError

OPERATIONS = ("add", "remove", "clone", "update")
# Root fields of the draft's Table 1 a delta may not hold.
FORBIDDEN_ROOT = ("version", "isComplete", "tracks", "publishTracks", "initDataList")
PARENT_FIELDS = ("parentName", "parentNamespace")


def is_delta(doc: dict) -> bool:
    return "deltaUpdate" in doc


def apply_delta(doc: dict, delta: dict) -> dict:
    """The catalog document ``doc`` with the delta update ``delta`` applied (``doc`` is not changed)."""
    ops = delta.get("deltaUpdate")
    if not isinstance(ops, list) or not ops:
        raise RemoteProtocolError("MSF delta update needs a non-empty deltaUpdate array")
    if not isinstance(delta.get("generatedAt"), (int, float)):
        raise RemoteProtocolError("MSF delta update needs generatedAt")
    if extra := [k for k in FORBIDDEN_ROOT if k in delta]:
        raise RemoteProtocolError(f"MSF delta update holds root fields it may not: {', '.join(extra)}")
    out = copy.deepcopy(doc)
    tracks = out["tracks"]
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or op.get("op") not in OPERATIONS or not isinstance(op.get("tracks"), list):
            raise RemoteProtocolError(f"MSF delta operation {i} is not an add, remove, clone or update with tracks")
        for obj in op["tracks"]:
            if not isinstance(obj, dict):
                raise RemoteProtocolError(f"MSF delta {op['op']}: a track that is not an object")
            _apply(op["op"], tracks, obj)
    out["generatedAt"] = delta["generatedAt"]
    return out


def _apply(op: str, tracks: list, obj: dict) -> None:
    if op == "add":
        _check_new(tracks, obj, op)
        tracks.append(copy.deepcopy(obj))
    elif op == "remove":
        if set(obj) - {"name", "namespace"}:
            raise RemoteProtocolError("MSF delta remove: a track object with fields besides name and namespace")
        tracks.remove(tracks[_index(tracks, obj.get("namespace"), obj.get("name"), op)])
    else:
        name = obj.get("parentName", obj.get("name") if op == "update" else None)
        at = _index(tracks, obj.get("parentNamespace"), name, op)
        fields = {k: copy.deepcopy(v) for k, v in obj.items() if k not in PARENT_FIELDS}
        changed = {**tracks[at], **fields}
        if op == "clone":
            _check_new(tracks, changed, op)
            tracks.append(changed)
        else:
            if _key(changed) != _key(tracks[at]):
                _check_new(tracks, changed, op)  # renamed onto another track
            tracks[at] = changed


def _key(obj: dict) -> tuple:
    return obj.get("namespace"), obj.get("name")


def _index(tracks: list, namespace, name, op: str) -> int:
    if not isinstance(name, str):
        raise RemoteProtocolError(f"MSF delta {op}: a track without a string {'name' if op == 'remove' else 'parentName'}")
    for i, t in enumerate(tracks):
        if isinstance(t, dict) and _key(t) == (namespace, name):
            return i
    raise RemoteProtocolError(f"MSF delta {op}: no track {name[:64]!r} in the catalog")


def _check_new(tracks: list, obj: dict, op: str) -> None:
    if not isinstance(obj.get("name"), str):
        raise RemoteProtocolError(f"MSF delta {op}: a track without a string name")
    if any(isinstance(t, dict) and _key(t) == _key(obj) for t in tracks):
        raise RemoteProtocolError(f"MSF delta {op}: track {obj['name'][:64]!r} is already in the catalog")

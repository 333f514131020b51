"""``rtmpq sub``: subscribe to a broadcast over MoQ and print what arrives."""

import asyncio
import json
import os
import sys
import time

from ..media.catalog import Catalog
from ..moq.client import SkippedGroup, TrackChoice
from ..moq.datagram_order import DatagramOrder
from ..moq.follow import follow_broadcast
from ..moq.transport import parse_moq_url
from ..redact import names_are_public, safe_name
from .nodes import upstream_options


# --rendition RUNG that no catalog of the broadcast lists this many seconds after the first: said
# (the source's rendition is taken meanwhile, as before). A transcoder lists its rungs in a
# catalog of its own right after the source's (the edge waits as long: RENDITION_LISTING_WAIT).
RENDITION_WAIT = 3.0
# The playback token when --token is not given: arguments show in ps to every user of the host,
# a process's environment does not.
TOKEN_ENV = "RTMPQ_TOKEN"


async def run_sub(args, config, stop: asyncio.Event) -> int:
    # the name is the one this subscriber typed: its log says it as typed, not hashed as a
    # node's log hides an open node's stream keys (redact.py)
    names_are_public(True)
    host, port, path = parse_moq_url(args.url)
    broadcast = path.strip("/")
    if "/" not in broadcast:
        raise ValueError(f"{args.url!r}: expected moqt://HOST:PORT/<app>/<key>")
    counts: dict[str, int] = {}
    sizes = 0
    skipped, skipped_subgroups = [], []  # (track, group) each
    latencies = []
    started = time.monotonic()
    deadline = started + args.seconds if args.seconds else None
    timeout_ms = int(args.delivery_timeout * 1000) if args.delivery_timeout else None
    out = sys.stdout
    datagrams = DatagramOrder(safe_name(broadcast))  # counts the datagram objects dropped (lost their place)
    loop = asyncio.get_running_loop()
    # --track names none of the catalog's tracks (a typo): waited for as long as --wait waits for a
    # broadcast, then said and ended (was: a warning, then waiting without end)
    named, none_listed = set(args.track or ()), loop.create_future()
    absent_timer: asyncio.TimerHandle | None = None
    listed: list[str] = []  # the newest catalog's tracks

    def absent() -> None:
        if not none_listed.done():
            none_listed.set_result(f"{broadcast} has no track {', '.join(sorted(named))} (its catalog lists "
                                   f"{', '.join(listed) or 'none'}; waited {config.upstream.wait:g} s, --wait)")

    rung, rung_timer = getattr(args, "rendition", None), None

    def no_rung() -> None:
        if not any(name.endswith("-" + rung) for name in listed):
            print(f"rtmpq sub: {broadcast} has no rendition {rung} (its tracks: {', '.join(listed) or 'none'}): "
                  "taking the source's rendition; taken when it comes", file=sys.stderr)

    def check_named(catalog: Catalog) -> None:
        nonlocal absent_timer, rung_timer
        listed[:] = sorted(t.name for t in catalog.tracks)
        if rung and rung_timer is None:  # (said at most once)
            rung_timer = loop.call_later(RENDITION_WAIT, no_rung)
        if not named or named & set(listed):
            if absent_timer is not None:
                absent_timer.cancel()
                absent_timer = None
        elif absent_timer is None:
            absent_timer = loop.call_later(config.upstream.wait, absent)

    async def consume() -> None:
        nonlocal sizes
        choice = TrackChoice(args.track, getattr(args, "rendition", None))
        token = args.token or os.environ.get(TOKEN_ENV) or None
        async for item in follow_broadcast(host, port, broadcast, wait=config.upstream.wait, token=token,
                                           delivery_timeout_ms=timeout_ms, choice=choice, datagrams=datagrams,
                                           **upstream_options(config)):
            if isinstance(item, Catalog):
                check_named(item)
                if args.json:
                    out.write(json.dumps({"catalog": json.loads(item.to_json())}) + "\n")
                continue
            if isinstance(item, SkippedGroup):
                # the rest of one subgroup of a group (its other subgroups came) is no skipped group
                (skipped if item.subgroup is None else skipped_subgroups).append((item.track, item.group))
                if args.json:
                    what = {"track": item.track, "group": item.group, "code": item.code}
                    if item.subgroup is not None:
                        what["subgroup"] = item.subgroup
                    out.write(json.dumps({"skipped": what}) + "\n")
                continue
            counts[item.track] = counts.get(item.track, 0) + 1
            sizes += item.size
            latency = (time.time_ns() - item.received_ns) / 1e6 if item.received_ns else None
            if latency is not None:
                latencies.append(latency)
            if args.json:
                out.write(json.dumps({"track": item.track, "group": item.group, "object": item.index,
                                      "pts": item.pts, "dts": item.dts, "keyframe": item.keyframe,
                                      "size": item.size, "latency_ms": None if latency is None else round(latency, 3)}) + "\n")
            if args.frames and sum(counts.values()) >= args.frames:
                return

    task = asyncio.ensure_future(consume())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper, none_listed},
                           timeout=None if deadline is None else deadline - time.monotonic(),
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        for timer in (absent_timer, rung_timer):
            if timer is not None:
                timer.cancel()
        if not task.done():
            task.cancel()
    failed = task.done() and not task.cancelled() and task.exception() is not None
    if failed:
        print(f"rtmpq sub: {task.exception()}", file=sys.stderr)
    if none_listed.done():
        print(f"rtmpq sub: {none_listed.result()}", file=sys.stderr)
    latencies.sort()
    summary = {"objects": counts, "bytes": sizes, "skipped_groups": len(skipped),
               "seconds": round(time.monotonic() - started, 3)}
    if skipped_subgroups:
        summary["skipped_subgroups"] = len(skipped_subgroups)
    if datagrams.dropped:
        summary["datagrams_dropped"] = datagrams.dropped
    if latencies:
        summary["latency_ms_p50"] = round(latencies[len(latencies) // 2], 3)
        summary["latency_ms_p99"] = round(latencies[int(len(latencies) * 0.99)], 3)
    print(json.dumps({"summary": summary}), file=sys.stderr if args.json else sys.stdout)
    # 1 also when it ended on an error after objects came (its server lost and not back within
    # --wait): a script tells that from the broadcast's end (was: 0 for both)
    return 0 if counts and not failed and not none_listed.done() else 1

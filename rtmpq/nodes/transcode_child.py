"""`rtmpq up --ladder` with [transcode] isolate: the ladder in child processes, one per broadcast.

A child is ``rtmpq transcode --upstream --broadcast NAME`` to the node's own MoQ listener on
loopback: it subscribes to that broadcast's source video there and PUBLISHes the rungs back, as a
separate transcoder node does (nodes/transcode.py ``run_transcode``). The edge of ``up`` reads them
from the relay (up.py ``LocalFeed``). ``TranscoderChildren`` starts one for each broadcast the
relay lists (what a transcoder node would be told of) and stops it when the broadcast is gone. A
decoder that crashes a child (SIGSEGV in libavcodec, an abort, an OOM kill) ends only that
broadcast's rungs: the other broadcasts' children go on, the relay keeps its rung tracks for
[publish] grace_period, the child is started again and PUBLISHes them anew, and their viewers go
on from its first groups.
"""

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys

from ..config import Config, section_environment, setting_prefixes
from ..media.catalog import RUNG_NAME
from ..media.frames import VIDEO
from ..redact import names_public, safe_name

log = logging.getLogger("rtmpq.transcode")

# A child that ran this long (seconds) before it died is restarted after [transcode] restart_min
# again, not after the doubled delay of a child that keeps dying at once.
TRANSCODER_STABLE = 60.0
# Seconds the child has to stop after SIGTERM (its own graceful stop) before it is killed.
CHILD_STOP_TIMEOUT = 3.0
# Seconds a broadcast's child is left running once the broadcast is gone, before its SIGTERM: the
# rungs' last frames go out and end whole (the child takes up to RUNG_DRAIN_TIMEOUT, 5 s, for
# them), and a publish of that name back within it finds its child running.
CHILD_LINGER = 5.0
# Linux prctl(PR_SET_PDEATHSIG): the kernel sends the child SIGTERM if `up` dies without stopping it
# (SIGKILL, a crash), so no transcoder is left reconnecting to a node that is gone.
PR_SET_PDEATHSIG = 1
# A child's metrics: `up` binds a loopback listener per broadcast once and hands it to each of
# that broadcast's children as this inherited file descriptor (no port to agree on, nothing to
# race for between two lives); the child serves its ops routes there, and `up`'s /metrics reads
# its rtmpq_transcode_* series.
OPS_FD_ENV = "RTMPQ_TRANSCODER_OPS_FD"
# set for a child of a node whose broadcast names are public ([publish.keys] or [auth]: no key is
# a name), so the child logs them as `up` does, not hashed as on an open node
PUBLIC_NAMES_ENV = "RTMPQ_TRANSCODER_PUBLIC_NAMES"
# Its log lines (on up's stderr) read "[transcoder child PID] rtmpq.…: …", not as up's own.
CHILD_LOG_LABEL = "transcoder child"
CHILD_SERIES = "rtmpq_transcode_"  # the child's series `up` serves (not its process or QUIC ones)
# Seconds a scrape of `up` waits for its children's metrics; past it a child's are left out of that scrape.
CHILD_METRICS_TIMEOUT = 1.0


def loopback_of(host: str) -> str:
    """The address a process on this host reaches a listener bound to ``host`` at."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _death_signal():
    """A preexec_fn that asks the kernel for SIGTERM when the parent dies (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # resolved before fork: only a C call after it


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class TranscoderChild:
    """Runs, watches and restarts the child of one broadcast. ``start(host, port)`` once the MoQ
    listener is up; ``terminate()``, then ``stopped()``, stop it. ``pid`` is the running child's
    (None between lives)."""

    def __init__(self, config: Config, broadcast: str) -> None:
        self.config = config
        self.broadcast = broadcast
        self.label = safe_name(broadcast)
        self.process: asyncio.subprocess.Process | None = None
        self.deaths = 0  # the child died (crash, kill) this many times
        self._task: asyncio.Task | None = None
        self._ops: socket.socket | None = None  # the child's metrics listener (127.0.0.1, our fd)
        self.series: list = []  # the child's rtmpq_transcode_* families, as of the last scrape

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def command(self, host: str, port: int) -> list[str]:
        url = f"moqt://[{host}]:{port}" if ":" in host else f"moqt://{host}:{port}"
        level = logging.getLevelName(logging.getLogger("rtmpq").getEffectiveLevel())
        # --insecure: the child dials this node's own listener on this host (the certificate may
        # name a public host, not the loopback address)
        return [sys.executable, "-m", "rtmpq", "--log-level", level if level in ("DEBUG", "INFO", "WARNING", "ERROR")
                else "INFO", "--log-label", CHILD_LOG_LABEL, "transcode", "--upstream", url, "--insecure",
                "--quic-backend", self.config.moq.backend, "--broadcast", self.broadcast]

    def environment(self) -> dict[str, str]:
        """This process's environment without its rtmpq settings, plus the ones the child needs:
        the ladder's, the auth secret or node token (a token per connection, minted there), the
        QUIC idle timeout. No HTTP listener of its own: the node's serves the operator, and the
        child its metrics on the loopback socket it inherits (OPS_FD_ENV)."""
        config = self.config
        settings = setting_prefixes()
        env = {k: v for k, v in os.environ.items() if not k.startswith(settings)}
        env.update(section_environment(config, "transcode", skip=("isolate", "restart_min", "restart_max")))
        env.update(section_environment(config, "auth", skip=("require_playback_token", "playback_session")))
        env["RTMPQ_MOQ_IDLE_TIMEOUT"] = str(config.moq.idle_timeout)
        env["RTMPQ_NODE_STOP_TIMEOUT"] = str(min(config.node.stop_timeout, CHILD_STOP_TIMEOUT))
        env["RTMPQ_HTTP_ENABLED"] = "false"
        if names_public():
            env[PUBLIC_NAMES_ENV] = "1"
        if self._ops is not None:
            env[OPS_FD_ENV] = str(self._ops.fileno())
        return env

    def start(self, host: str, port: int) -> None:
        self._ops = socket.create_server(("127.0.0.1", 0))
        self._ops.set_inheritable(True)
        self._task = asyncio.get_running_loop().create_task(self._run(loopback_of(host), port))

    async def _run(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        t = self.config.transcode
        delay = t.restart_min
        while True:
            began = loop.time()
            try:
                self.process = await asyncio.create_subprocess_exec(*self.command(host, port), env=self.environment(),
                                                                    stdin=asyncio.subprocess.DEVNULL,
                                                                    pass_fds=(self._ops.fileno(),),
                                                                    preexec_fn=_death_signal())
            except OSError as exc:
                log.error("transcoder: cannot start the child process of %s: %s; again in %.1f s", self.label,
                          exc, delay)
            else:
                log.info("transcoder: child process pid %d, ladder %s, for %s over MoQ at %s:%d", self.process.pid,
                         t.ladder, self.label, host, port)
                returncode = await self.process.wait()
                pid, self.process = self.process.pid, None
                if loop.time() - began >= TRANSCODER_STABLE:
                    delay = t.restart_min
                self.deaths += 1
                log.warning("transcoder: child process pid %d of %s %s; its rungs stop, the other tracks and "
                            "broadcasts go on; restarting it in %.1f s", pid, self.label, exit_reason(returncode),
                            delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, t.restart_max)

    async def refresh(self) -> None:
        """For NodeView.refreshers: read the child's rtmpq_transcode_* series from its metrics
        listener, within CHILD_METRICS_TIMEOUT; none while it is restarted or does not answer."""
        series = []
        if self.process is not None and self._ops is not None:
            try:
                text = await asyncio.wait_for(_get_metrics(self._ops.getsockname()[1]), CHILD_METRICS_TIMEOUT)
                series = [m for m in _families(text) if m.name.startswith(CHILD_SERIES)]
            except (OSError, TimeoutError, ValueError) as exc:
                log.debug("transcoder: the metrics of %s's child: %r", self.label, exc)
        self.series = series

    def terminate(self) -> asyncio.subprocess.Process | None:
        """Stop watching, and SIGTERM the child now: the process to wait for (``stopped``), or None."""
        if self._task is not None:
            self._task.cancel()
        if self._ops is not None:
            self._ops.close()
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return None
        process.terminate()
        return process

    async def stopped(self, process: asyncio.subprocess.Process) -> None:
        """After ``terminate``: its process is gone, SIGKILLed after CHILD_STOP_TIMEOUT."""
        try:
            await asyncio.wait_for(process.wait(), CHILD_STOP_TIMEOUT)
        except TimeoutError:
            log.warning("transcoder: child process pid %d of %s did not stop within %g s; killed", process.pid,
                        self.label, CHILD_STOP_TIMEOUT)
            process.kill()
            await process.wait()


class TranscoderChildren:
    """`up`'s ladder: a TranscoderChild for each broadcast ``relay`` lists (a transcoder node
    would be told of it) that has something to transcode, started when it is listed with a video
    source track and stopped (SIGTERM) CHILD_LINGER seconds after it no longer is, or no longer
    has one. Before, an audio-only publish got a child too, a process that had nothing to do. A
    broadcast the relay serves for another node (published into it, or from a relay above) is not
    in this node's registry: its catalog is not read here, and it gets a child as before.
    ``start(host, port)`` once the MoQ listener is up; ``close()`` stops them all."""

    def __init__(self, config: Config, relay) -> None:
        self.config = config
        self.relay = relay
        self.children: dict[str, TranscoderChild] = {}  # broadcast name -> its child
        self._address: tuple[str, int] | None = None
        self._deaths_before = 0  # of the children of broadcasts that are gone
        self._stopping: set[asyncio.Task] = set()
        self._lingering: dict[str, asyncio.TimerHandle] = {}  # gone broadcast -> its child's SIGTERM
        self._watched: dict[str, object] = {}  # broadcast name -> the local Broadcast whose catalog we watch

    @property
    def deaths(self) -> int:
        return self._deaths_before + sum(c.deaths for c in self.children.values())

    def pids(self) -> dict[str, int]:
        """Broadcast name -> PID of its child, for the children running now."""
        return {name: c.pid for name, c in self.children.items() if c.pid is not None}

    def start(self, host: str, port: int) -> None:
        self._address = (host, port)
        self.relay.watch_listing(self._listing_changed)
        self._follow_listing()

    def _listing_changed(self) -> None:
        # once the relay's handler is over: a broadcast that ends is told of before it leaves the registry
        asyncio.get_running_loop().call_soon(self._follow_listing)

    def _has_video(self, name: str) -> bool:
        """Whether broadcast ``name`` has a video track to make rungs of (one of another node
        is taken to: see the class docstring); its catalog's changes are followed from now on."""
        broadcast = self.relay.registry.get(name)
        if broadcast is None:
            return True
        if self._watched.get(name) is not broadcast:
            self._watched[name] = broadcast
            broadcast.watch_catalog(self._listing_changed)
        return any(t.kind == VIDEO and not RUNG_NAME.search(t.name) for t in broadcast.catalog.tracks)

    def _follow_listing(self) -> None:
        if self._address is None:
            return
        names = set(self.relay.listed())
        for name in self._watched.keys() - names:
            del self._watched[name]
        listed = {name for name in names if self._has_video(name)}
        for name in sorted(listed - self.children.keys()):
            child = self.children[name] = TranscoderChild(self.config, name)
            child.start(*self._address)
        for name in listed & self._lingering.keys():  # back in time: its child goes on
            self._lingering.pop(name).cancel()
        for name in sorted(self.children.keys() - listed - self._lingering.keys()):
            self._lingering[name] = asyncio.get_running_loop().call_later(CHILD_LINGER, self._gone, name)

    def _gone(self, name: str) -> None:
        del self._lingering[name]
        child = self.children.pop(name)
        log.info("transcoder: %s %s; stopping its child process%s", child.label,
                 "has no video to transcode" if name in self.relay.listed() else "is gone",
                 "" if child.pid is None else f" pid {child.pid}")
        self._stop(child)

    def _stop(self, child: TranscoderChild) -> None:
        """SIGTERM a child no longer in ``children`` (its deaths still count), and wait for it."""
        self._deaths_before += child.deaths
        process = child.terminate()  # (the SIGTERM goes now: up's close sends its GOAWAY after)
        if process is not None:
            task = asyncio.ensure_future(child.stopped(process))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def refresh(self) -> None:
        """For NodeView.refreshers: every child's series, read at once (``TranscoderChild.refresh``)."""
        await asyncio.gather(*(c.refresh() for c in list(self.children.values())))

    def metrics(self):
        """For NodeView.collectors: the children's rtmpq_transcode_* series (a family several
        children serve is one family with all their samples), each running child's PID by its
        broadcast, and how often a child died."""
        from copy import copy

        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        merged: dict[str, object] = {}
        for child in list(self.children.values()):
            for family in child.series:
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = copy(family)
                    merged[family.name].samples = list(family.samples)
        yield from merged.values()
        pid = GaugeMetricFamily("rtmpq_transcoder_child_pid", "PID of a broadcast's ladder child process "
                                "([transcode] isolate); none while it is restarted", labels=["broadcast"])
        for name, value in sorted(self.pids().items()):
            pid.add_metric([name], value)
        yield pid
        yield CounterMetricFamily("rtmpq_transcoder_child_deaths", "times a ladder child process died "
                                  "(crash, kill) and was restarted", value=self.deaths)

    async def close(self) -> None:
        """Stop following the listing, then every child: SIGTERM, SIGKILL after CHILD_STOP_TIMEOUT."""
        self._address = None
        self.relay.watch_listing(self._listing_changed, False)
        for handle in self._lingering.values():
            handle.cancel()
        self._lingering.clear()
        children, self.children = list(self.children.values()), {}
        for child in children:
            self._stop(child)
        await asyncio.gather(*list(self._stopping))


async def _get_metrics(port: int) -> str:
    """The body of GET /metrics from the child's listener on 127.0.0.1:``port``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status = head.split(" ", 2)[1]
        length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                       if line.lower().startswith("content-length:")), None)
        if status != "200" or length is None:
            raise ValueError(f"status {status}")
        return (await reader.readexactly(length)).decode()
    except asyncio.IncompleteReadError as exc:
        raise ConnectionError("the child closed the connection") from exc
    finally:
        writer.close()


def _families(text: str):
    from prometheus_client.parser import text_string_to_metric_families

    return list(text_string_to_metric_families(text))

"""Hosts for multi-host tests: network namespaces joined by veth links to one bridge.

Each host is a namespace with loopback and ``eth0`` at 10.213.0.N/24 (a private range that exists
only inside these namespaces); the bridge lives in a namespace of its own, so no traffic ever
touches the machine's own interfaces. Needs root (CI runs as root). ``Lab.close()`` kills what
runs inside and deletes every namespace.
"""

import asyncio
import os
import subprocess

SUBNET = "10.213.0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Lab:
    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or f"rq{os.getpid() % 100000}"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, tuple[str, str]] = {}  # name -> (namespace, address)
        self.procs: list[asyncio.subprocess.Process] = []
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def host(self, name: str) -> str:
        """A new host on the bridge; returns its address."""
        index = len(self.hosts) + 1
        ns, address = f"{self.tag}-{name}", f"{SUBNET}.{index}"
        _ip("netns", "add", ns)
        self.hosts[name] = (ns, address)
        port = f"p{index}"
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return address

    def address(self, name: str) -> str:
        return self.hosts[name][1]

    async def run(self, host: str, *args: str, env: dict | None = None, stdout=asyncio.subprocess.PIPE,
                  stderr=asyncio.subprocess.PIPE) -> asyncio.subprocess.Process:
        """Start ``args`` inside ``host``'s namespace (killed by close())."""
        proc = await asyncio.create_subprocess_exec("ip", "netns", "exec", self.hosts[host][0], *args,
                                                    env={**os.environ, **(env or {})}, stdout=stdout, stderr=stderr)
        self.procs.append(proc)
        return proc

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                pass
        for ns, _ in self.hosts.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)

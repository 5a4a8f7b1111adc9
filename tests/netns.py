"""A network namespace joined to this host by a veth pair.

For tests that cut a process off from its database without touching
anything shared: :func:`veth_namespace` creates a namespace and a veth pair
on a private ``10.253.x.0/30`` (``x`` drawn at random among the ones no
interface or route of this host uses), gives the namespace the ``.2`` side
and keeps ``.1`` here; :meth:`Link.cut` takes the host side down, which
drops every packet between the two, and :meth:`Link.restore` brings it back.
Both are removed afterwards, also when the test fails.

A PostgreSQL cluster reachable over it is a private one
(``tests.private_pg.private_postgres(listen=..., trust=...)``).

Namespaces need root (:func:`unavailable` says why one cannot be made).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


def unavailable() -> str | None:
    """Why no namespace can be made here, or None when one can."""
    if os.geteuid() != 0:
        return "creating a network namespace and a veth pair needs root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"ip netns does not work here: {probe.stderr.strip()}"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def _free_network() -> ipaddress.IPv4Network:
    """A 10.253.x.0/30 that no address or route of this host overlaps."""
    used = "".join(
        subprocess.run(["ip", "-4", *args], capture_output=True, text=True, check=True).stdout
        for args in (["-o", "addr", "show"], ["route", "show", "table", "all"])
    )
    for _ in range(50):
        x = random.randrange(256)
        if f"10.253.{x}." not in used:
            return ipaddress.IPv4Network(f"10.253.{x}.0/30")
    raise RuntimeError("no free 10.253.x.0/30 found for a test network")


@dataclass(frozen=True, kw_only=True)
class Link:
    """A namespace and the veth pair joining it to this host."""

    namespace: str
    host_device: str
    network: ipaddress.IPv4Network

    @property
    def host_address(self) -> str:
        """This host's side: what a process in the namespace connects to."""
        return str(self.network.network_address + 1)

    @property
    def namespace_address(self) -> str:
        return str(self.network.network_address + 2)

    def command(self, *args: str) -> list[str]:
        """``args`` run inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *args]

    def cut(self) -> None:
        """Drop every packet between the namespace and this host."""
        _ip("link", "set", self.host_device, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_device, "up")


@contextlib.contextmanager
def veth_namespace() -> Iterator[Link]:
    """A fresh namespace joined to this host; deleted with its veth pair afterwards."""
    suffix = secrets.token_hex(3)
    link = Link(namespace=f"ferryman-{suffix}", host_device=f"fmh{suffix}", network=_free_network())
    inside = f"fmn{suffix}"
    prefix = f"/{link.network.prefixlen}"
    try:
        _ip("netns", "add", link.namespace)
        _ip("link", "add", link.host_device, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", link.namespace)
        _ip("addr", "add", link.host_address + prefix, "dev", link.host_device)
        _ip("link", "set", link.host_device, "up")
        in_namespace = ("netns", "exec", link.namespace, "ip")
        _ip(*in_namespace, "addr", "add", link.namespace_address + prefix, "dev", inside)
        _ip(*in_namespace, "link", "set", inside, "up")
        _ip(*in_namespace, "link", "set", "lo", "up")
        yield link
    finally:
        # Deleting one end of a veth pair deletes both; each may be gone already.
        subprocess.run(["ip", "link", "del", link.host_device], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", link.namespace], capture_output=True, check=False)

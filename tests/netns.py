"""A network namespace joined to this host by a veth pair; a PostgreSQL cluster reachable over it.

For tests that cut a process off from its database without touching
anything shared: :func:`veth_namespace` creates a namespace and a veth pair
on a private ``10.253.x.0/30`` (``x`` drawn at random among the ones no
interface or route of this host uses), gives the namespace the ``.2`` side
and keeps ``.1`` here; :meth:`Link.cut` takes the host side down, which
drops every packet between the two, and :meth:`Link.restore` brings it back.
Both are removed afterwards, also when the test fails.

:func:`private_postgres` starts a cluster of the test's own (``initdb`` and
``pg_ctl`` on a free port, in a temporary directory) that listens on the
loopback and on the addresses given, trusting the networks given; the
shared server on 5432 is never touched. The binaries come from
``/usr/lib/postgresql/*/bin`` (or ``FERRYMAN_TEST_PG_BIN``); as root the
cluster runs as the ``postgres`` user, since PostgreSQL refuses root.

Both need root (:func:`unavailable` says why they cannot be used).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg


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


def _binaries() -> Path:
    configured = os.environ.get("FERRYMAN_TEST_PG_BIN")
    if configured:
        return Path(configured)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    if not found:
        raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True, kw_only=True)
class Cluster:
    """A running private cluster."""

    port: int
    directory: Path

    def url(self, database: str, *, host: str = "127.0.0.1") -> str:
        return f"postgresql+psycopg://postgres@{host}:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')


@contextlib.contextmanager
def private_postgres(
    *, listen: Sequence[str] = (), trust: Sequence[ipaddress.IPv4Network] = ()
) -> Iterator[Cluster]:
    """A cluster on 127.0.0.1 and ``listen``, trusting ``trust``; stopped and deleted after."""
    directory = Path(tempfile.mkdtemp(prefix="ferryman-pg-"))
    data = directory / "data"
    # PostgreSQL refuses to run as root; its files must then be the postgres user's.
    as_user: dict[str, Any] = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}
    binaries = _binaries()

    def run(program: str, *args: str) -> None:
        done = subprocess.run(
            [str(binaries / program), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            **as_user,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")

    if as_user:
        shutil.chown(directory, "postgres", "postgres")
    started = False
    try:
        run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
        with (data / "pg_hba.conf").open("a") as hba:
            hba.writelines(f"host all all {network} trust\n" for network in trust)
        cluster = Cluster(port=_free_port(), directory=directory)
        addresses = ",".join(["127.0.0.1", *listen])
        options = (
            f"-c listen_addresses={addresses} -c port={cluster.port} "
            f"-c unix_socket_directories={directory} -c fsync=off"
        )
        log = str(directory / "log")
        run("pg_ctl", "-D", str(data), "-l", log, "-o", options, "-w", "-t", "60", "start")
        started = True
        yield cluster
    finally:
        if started:
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "-t", "60", "stop")
        shutil.rmtree(directory, ignore_errors=True)

"""A second host for the measures across a network: a network namespace joined to this one by a
veth pair, with addresses the harness picks (10.214.N.1/30 here, 10.214.N.2/30 there, N from
the pid and free on this machine) and removes afterwards; commands run in it with
`ip netns exec`. Needs root.
"""
from __future__ import annotations

import os
import subprocess

from .log import BenchError, log

NET = "10.214"  # the tests' second host (Tests/IntegrationTests/CrossHostTests.swift) uses 10.213


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)


def _free_subnet(pid: int) -> int:
    """N such that no address of this machine lies in NET.N.0/24 (the one from the pid first)."""
    used = _ip("-o", "addr", "show").stdout
    for i in range(250):
        n = (pid + i) % 250 + 1
        if f" {NET}.{n}." not in used:
            return n
    raise BenchError(f"every {NET}.N.0/24 subnet is in use on this machine: no address for the second host")


class SecondHost:
    """The namespace bm-bench-PID and the veth pair bmbPIDa (here) / bmbPIDb (in it).

    create() makes them (removing what it made if a step fails); remove() takes them away and may
    be called any number of times (register it as a cleanup before create: it must also run after
    an error or a signal)."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.namespace = f"bm-bench-{pid}"
        self.local_link, self.remote_link = f"bmb{pid % 100000}a", f"bmb{pid % 100000}b"
        n = _free_subnet(pid)
        self.local_address, self.address = f"{NET}.{n}.1", f"{NET}.{n}.2"
        self.made = False

    def create(self) -> None:
        """The namespace, the veth pair with one end in it, both ends and its lo up."""
        self.made = True
        inside = ["netns", "exec", self.namespace, "ip"]
        for step in (["netns", "add", self.namespace],
                     ["link", "add", self.local_link, "type", "veth", "peer", "name", self.remote_link],
                     ["link", "set", self.remote_link, "netns", self.namespace],
                     ["addr", "add", f"{self.local_address}/30", "dev", self.local_link],
                     ["link", "set", self.local_link, "up"],
                     [*inside, "addr", "add", f"{self.address}/30", "dev", self.remote_link],
                     [*inside, "link", "set", self.remote_link, "up"],
                     [*inside, "link", "set", "lo", "up"]):
            p = _ip(*step)
            if p.returncode != 0:
                self.remove()
                raise BenchError(f"cannot set up the second host: ip {' '.join(step)}: {p.stderr.strip()}")
        log(f"second host: network namespace {self.namespace}, {self.local_address} here ({self.local_link}) "
            f"<-> {self.address} there ({self.remote_link})")

    def run_in(self) -> list[str]:
        """The command prefix that runs a command on the second host."""
        return ["ip", "netns", "exec", self.namespace]

    def remove(self) -> None:
        """Deletes the veth pair (both ends) and the namespace; a warning if either is still there."""
        if not self.made:
            return
        self.made = False
        try:
            _ip("link", "del", self.local_link)
            _ip("netns", "del", self.namespace)
            left = [what for what, there in ((f"link {self.local_link}", _ip("link", "show", self.local_link).returncode == 0),
                                             (f"netns {self.namespace}", self.namespace in _ip("netns", "list").stdout.split()))
                    if there]
        except (OSError, subprocess.SubprocessError) as e:
            left = [f"({e})"]
        if left:
            log(f"warning: the second host is not all gone: {', '.join(left)} (remove with ip link del / ip netns del)")

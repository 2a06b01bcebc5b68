"""A swarm-like IPVS balancer with real traffic, made of three network namespaces.

client (198.18.10.2) -> balancer (198.18.10.1 | 198.18.20.1) -> server (198.18.20.2)

The balancer marks tcp/30000 in its mangle table exactly as swarm does and balances the
mark through IPVS (NAT) to busybox httpd in the server. Further fwmark services mimic
swarm's non-monotonic mark/port assignment, plus one mark that no rule sets.
All addresses are in namespaces this lab creates (198.18.0.0/15 is for benchmarks).
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass

from ipvs_testlib import mark_rule, sh

# published port -> mark, not in the same order (as swarm assigns them)
SWARM_PORTS = {30000: 256, 30001: 258, 30002: 257}
UNMARKED_FWMARK = 999  # an IPVS service with no mangle rule


@dataclass
class Lab:
    tag: str
    backend: str

    @property
    def balancer(self) -> str:
        return f"{self.tag}lb"

    @property
    def client(self) -> str:
        return f"{self.tag}cl"

    @property
    def server(self) -> str:
        return f"{self.tag}sv"

    @property
    def ns_path(self) -> str:
        return f"/run/netns/{self.balancer}"

    def iptables(self, *args: str) -> None:
        sh(f"iptables-{self.backend}", *args, ns=self.balancer)

    def requests(self, port: int, n: int) -> None:
        """n sequential HTTP requests from the client through IPVS; each must succeed."""
        for i in range(n):
            res = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.client,
                    "curl",
                    "-sS",
                    "--max-time",
                    "10",
                    f"http://198.18.10.1:{port}/",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert res.returncode == 0 and "hello" in res.stdout, (
                f"request {i + 1} to :{port} failed: {res.stderr.strip()}"
            )


@contextmanager
def swarm_like_lab(backend: str):
    """Build the three namespaces with `backend` ("nft" or "legacy") holding the rules."""
    lab = Lab(tag=f"l{os.getpid() % 10000}{backend[0]}", backend=backend)
    www = f"/tmp/{lab.tag}-www"
    httpd = None
    try:
        for ns in (lab.client, lab.balancer, lab.server):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh(
            "ip",
            "link",
            "add",
            "cl0",
            "netns",
            lab.client,
            "type",
            "veth",
            "peer",
            "name",
            "lbc0",
            "netns",
            lab.balancer,
        )
        sh(
            "ip",
            "link",
            "add",
            "sv0",
            "netns",
            lab.server,
            "type",
            "veth",
            "peer",
            "name",
            "lbs0",
            "netns",
            lab.balancer,
        )
        for ns, dev, addr in (
            (lab.client, "cl0", "198.18.10.2/24"),
            (lab.balancer, "lbc0", "198.18.10.1/24"),
            (lab.balancer, "lbs0", "198.18.20.1/24"),
            (lab.server, "sv0", "198.18.20.2/24"),
        ):
            sh("ip", "addr", "add", addr, "dev", dev, ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
        sh("ip", "route", "add", "default", "via", "198.18.10.1", ns=lab.client)
        sh("ip", "route", "add", "default", "via", "198.18.20.1", ns=lab.server)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=lab.balancer)

        for port, mark in SWARM_PORTS.items():
            lab.iptables(
                *mark_rule(port, mark),
            )
            sh("ipvsadm", "-A", "-f", str(mark), "-s", "rr", ns=lab.balancer)
            sh("ipvsadm", "-a", "-f", str(mark), "-r", "198.18.20.2:0", "-m", ns=lab.balancer)
        sh("ipvsadm", "-A", "-f", str(UNMARKED_FWMARK), "-s", "rr", ns=lab.balancer)
        sh("ipvsadm", "-a", "-f", str(UNMARKED_FWMARK), "-r", "198.18.20.3:0", "-m", ns=lab.balancer)

        os.makedirs(www, exist_ok=True)
        with open(f"{www}/index.html", "w") as f:
            f.write("hello from the lab\n")
        httpd = subprocess.Popen(
            ["ip", "netns", "exec", lab.server, "busybox", "httpd", "-f", "-p", "30000", "-h", www]
        )
        deadline = time.monotonic() + 30
        while (
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    lab.server,
                    "curl",
                    "-sf",
                    "-o",
                    "/dev/null",
                    "--max-time",
                    "5",
                    "http://127.0.0.1:30000/",
                ]
            ).returncode
            != 0
        ):
            assert time.monotonic() < deadline, "busybox httpd did not start in the server namespace"
            time.sleep(0.3)
        yield lab
    finally:
        if httpd:
            httpd.kill()
            httpd.wait()
        for ns in (lab.client, lab.balancer, lab.server):
            sh("ip", "netns", "del", ns, check=False)

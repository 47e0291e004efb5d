"""Simulated hosts on this machine: network namespaces joined by a bridge.

Each host gets its own network namespace with an interface named `eth0` (as on EMR),
its own hostname (a UTS namespace per process) and its own hosts file (`ip netns exec`
bind-mounts /etc/netns/<namespace>/hosts over /etc/hosts). The bridge lives in a
namespace of its own, so nothing here touches the machine's real network: every address
the hosts can reach belongs to a namespace this module created. Needs root (tests and CI
run as root); `unavailable()` says why it cannot run elsewhere.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NETNS_ETC = Path("/etc/netns")
# A private range the namespaces alone route (they have no route anywhere else).
SUBNET = "10.213.7"


@dataclass(frozen=True)
class Host:
    name: str  # the hostname, resolvable on every host
    netns: str
    address: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "the 'ip' (iproute2) and 'unshare' (util-linux) commands are missing"
    probe = f"hlprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"'ip netns add' failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def remove_stale() -> list[str]:
    """Remove the namespaces (and their processes) of clusters whose test process died
    before its teardown (killed, timed out); return their names."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    stale = [name for name in listed if (m := re.match(r"^hl(\d+)c\d+-(h\d+|sw)$", name)) and not Path(f"/proc/{m.group(1)}").exists()]
    for netns in stale:
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            _kill(int(pid))
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)
    return stale


_numbers = itertools.count()


class Cluster:
    """`count` hosts named node1..nodeN on one bridge; `down()` removes all of it."""

    def __init__(self, count: int = 3, tag: str | None = None):
        # hl<test process id>c<cluster number>: unique while the process lives.
        self.tag = tag or f"hl{os.getpid()}c{next(_numbers)}"
        self.switch = f"{self.tag}-sw"
        self.hosts = [Host(f"node{i}", f"{self.tag}-h{i}", f"{SUBNET}.{i}") for i in range(1, count + 1)]
        self.processes: list[subprocess.Popen] = []

    def up(self) -> Cluster:
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for index, host in enumerate(self.hosts, start=1):
                _ip("netns", "add", host.netns)
                _ip("link", "add", "eth0", "netns", host.netns, "type", "veth", "peer", "name", f"port{index}", "netns", self.switch)
                _ip("-n", self.switch, "link", "set", f"port{index}", "master", "br0", "up")
                _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
                _ip("-n", host.netns, "link", "set", "eth0", "up")
                _ip("-n", host.netns, "link", "set", "lo", "up")
                self.write_hosts_file(host)
        except BaseException:
            self.down()
            raise
        return self

    def write_hosts_file(self, host: Host, own_name_on_loopback: bool = False) -> None:
        """The host's /etc/hosts: every host's name at its cluster address, or, with
        `own_name_on_loopback`, its own name at 127.0.1.1 as Debian's installer writes it."""
        lines = ["127.0.0.1 localhost"]
        for other in self.hosts:
            if other is host and own_name_on_loopback:
                lines.append(f"127.0.1.1 {other.name}")
            else:
                lines.append(f"{other.address} {other.name}")
        folder = NETNS_ETC / host.netns
        folder.mkdir(parents=True, exist_ok=True)
        # In place: a bind mount pins the inode, so running processes see the change.
        with open(folder / "hosts", "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def command(self, host: Host, argv: list[str]) -> list[str]:
        """`argv` as run on `host`: in its namespace, under its hostname."""
        return ["ip", "netns", "exec", host.netns, "unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', host.name, *argv]

    def start(self, host: Host, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        """A background process on `host`, its output in `log`; stopped by `down()`."""
        with open(log, "ab") as sink:
            process = subprocess.Popen(self.command(host, argv), env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def run(self, host: Host, argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(host, argv), env=env, capture_output=True, text=True, timeout=timeout)

    def pids(self, host: Host) -> list[int]:
        listed = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True)
        return [int(p) for p in listed.stdout.split()]

    def lose(self, host: Host) -> None:
        """The host is gone without a word, as a node that loses power or its network: its
        link goes down first, so no process on it closes a connection (no FIN, no RST
        reaches the others), then every process on it is killed."""
        subprocess.run(["ip", "-n", host.netns, "link", "set", "eth0", "down"], capture_output=True)
        for pid in self.pids(host):
            _kill(pid)

    def revive(self, host: Host) -> None:
        """The host's link up again (its processes stay gone)."""
        _ip("-n", host.netns, "link", "set", "eth0", "up")

    def down(self) -> None:
        """Kill every process in the namespaces and remove them and their files."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for host in self.hosts:
            for pid in self.pids(host):
                _kill(pid)
        for process in self.processes:
            process.wait(timeout=30)
        for netns in [h.netns for h in self.hosts] + [self.switch]:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
            shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)

    def wait_for_count(self, log: Path, text: str, count: int, timeout: float) -> None:
        """Wait until `text` appears `count` times in `log`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and log.read_text(errors="replace").count(text) >= count:
                return
            time.sleep(0.05)
        raise TimeoutError(f"'{text}' did not appear {count} times in {log} within {timeout:.0f} s")

    def wait_for(self, log: Path, text: str, timeout: float, process: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and text in log.read_text(errors="replace"):
                return
            if process is not None and process.poll() is not None:
                break
            time.sleep(0.5)
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
        raise TimeoutError(f"'{text}' did not appear in {log} within {timeout:.0f} s:\n{tail}")


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)

"""Server processes for the benchmark: start on a free loopback port, wait, measure CPU, stop.

Every server runs in its own session (process group) so that stopping it also stops the
workers it forks (LitServe's inference worker, for one): ``stop`` signals that one group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """One server under test; ``cmd`` and ``env_extra`` are recorded in the report."""

    name: str
    cmd: Sequence[str]
    ready_url: str
    env_extra: Mapping[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    cwd: Path | None = None
    proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        with open(self.log_path or os.devnull, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                list(self.cmd), env={**os.environ, "DEEPSERVE_DRAIN_SECONDS": "0", **self.env_extra}, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.cwd, start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready after {timeout_s:.0f} s; see {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_s(self) -> float:
        """CPU seconds used so far by the server and every process it forked."""
        return tree_cpu_s(self.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)  # the group this server leads (start_new_session)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # LitServe's workers may outlive their parent for a moment; the group is ours alone.
        time.sleep(0.5)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by a process and every process it forked."""
    return sum(_proc_cpu_s(pid) for pid in _tree(root))


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (every process, every core) so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) * _TICK_S


def others_cores(sample_s: float, *ours: ServerProcess) -> float:
    """Cores busy over ``sample_s`` with work that is neither ours nor this process's."""
    t0, busy0, own0 = time.perf_counter(), busy_cpu_s(), own_cpu_s()
    mine0 = sum(s.cpu_s() for s in ours)
    time.sleep(sample_s)
    elapsed = time.perf_counter() - t0
    mine = sum(s.cpu_s() for s in ours) - mine0 + own_cpu_s() - own0
    return max(0.0, (busy_cpu_s() - busy0 - mine) / elapsed)


def wait_for_quiet(max_cores: float, timeout_s: float, *ours: ServerProcess) -> tuple[bool, float]:
    """Wait (up to ``timeout_s``) until other processes use less than ``max_cores``;
    (whether it got quiet, the last reading)."""
    deadline = time.monotonic() + timeout_s
    while True:
        load = others_cores(1.0, *ours)
        if load <= max_cores or time.monotonic() >= deadline:
            return load <= max_cores, load

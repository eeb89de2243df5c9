"""Run a command; record its wall time, CPU time and peak resident memory.

The peak comes from ``os.wait4`` (``ru_maxrss`` of that child alone). Run this
wrapper as its own small process: Linux carries a parent's peak RSS over into a
child at ``fork``/``exec``, so a child of a big process (the benchmark driver)
would report at least the driver's peak; this wrapper's own (about 10 MB) is the
floor here instead. ``other_cpu_share`` is the CPU that the rest of the machine
used meanwhile (``/proc/stat``), as a share of all cores: near 0 on a quiet
machine.

Usage::

    python benchmarks/peers/measure.py --json OUT.json [--log LOG] [--timeout S] -- CMD ...
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def wait_with_timeout(proc: subprocess.Popen, timeout: float | None):
    """``os.wait4`` the child, killing its process group after ``timeout`` seconds."""
    if timeout is None:
        _, status, usage = os.wait4(proc.pid, 0)
        return status, usage, False
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            return status, usage, False
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            return status, usage, True
        time.sleep(0.2)


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (not idle, not waiting on I/O)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen, signum: int) -> None:
    """Kill the command's process group and exit as if killed by ``signum``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    sys.exit(128 + signum)


def run(command: list[str], log, timeout: float | None) -> dict:
    """Run ``command`` to its end (or timeout); its measurements."""
    busy_before = busy_cpu_seconds()
    start = time.perf_counter()
    # its own session, so that a timeout kills everything it started; an interrupt of
    # this wrapper (Ctrl-C, kill) is passed on to that session
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: stop(proc, signum))
    status, usage, timed_out = wait_with_timeout(proc, timeout)
    wall = time.perf_counter() - start
    busy_after = busy_cpu_seconds()
    cpu = usage.ru_utime + usage.ru_stime
    other = None
    if busy_before is not None and busy_after is not None and wall > 0:
        other = max(0.0, busy_after - busy_before - cpu) / (wall * (os.cpu_count() or 1))
    return {
        "returncode": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "other_cpu_share": other,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "command": command,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="write the measurements here")
    parser.add_argument("--log", type=Path, default=None, help="the command's stdout + stderr")
    parser.add_argument("--timeout", type=float, default=None, help="kill after S seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    if args.log:
        with open(args.log, "w") as log:
            result = run(command, log, args.timeout)
    else:
        result = run(command, None, args.timeout)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

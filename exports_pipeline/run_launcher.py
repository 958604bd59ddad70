"""Dagster's default run launcher, plus the run worker health check that run monitoring needs.

The DefaultRunLauncher asks a code server to start each run in a new process (the run worker).
Dagster 1.13's launcher does not implement check_run_worker_health, so run monitoring cannot tell a
dead worker from a busy one. The code server notices its own children dying (within a second), but
not when it dies or is restarted with them (a service restart that kills the whole group, the OOM
killer, a hung server): such runs stay STARTED until max_runtime_seconds (6 hours), and run_retries
never starts them again. This launcher answers the health check for workers on this host, from
what Dagster already records, with no change to the runs themselves:

- the worker's process id is the pid of the run's latest RUN_START event (the worker reports it);
- the worker is on this host when the run's code server address (the hidden .dagster/grpc_info tag
  that the launcher sets) is a Unix socket or a loopback address;
- the worker is alive when that process exists, is not a zombie, and started before it reported
  RUN_START (a later start means the pid was reused by another process).

Asking the code server which runs it executes was the other option; it fails exactly when the code
server was restarted (a new server knows none of the old runs) and needs Dagster's private gRPC client.

A worker on another host (a remote code server) is reported RUNNING: nothing here can see it, and
any other answer makes run monitoring fail the run. Linux only (/proc); elsewhere the check is off.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus  # the health check's own types
from dagster._core.storage.tags import GRPC_INFO_TAG  # the code server's address, set by DefaultRunLauncher

LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
PROC = Path("/proc")
START_TIME_SLACK_SECONDS = 2.0  # /proc's boot time is whole seconds; process start times are clock ticks


def process_start_time(pid: int) -> float | None:
    """When the live process pid started (epoch seconds); None when there is none or only a zombie."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
    state, start_ticks = fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    if state in ("Z", "X", "x"):  # dead, not yet reaped by its parent
        return None
    boot_time = next(int(line.split()[1]) for line in (PROC / "stat").read_text().splitlines()
                     if line.startswith("btime "))
    return boot_time + start_ticks / os.sysconf("SC_CLK_TCK")


def worker_on_this_host(run: dg.DagsterRun) -> bool:
    """Whether the code server that started the run (and so its worker) runs on this host."""
    try:
        address = json.loads(run.tags.get(GRPC_INFO_TAG, ""))
    except ValueError:
        return False
    return bool(address.get("socket")) or address.get("host") in LOOPBACK_HOSTS


class LocalWorkerRunLauncher(dg.DefaultRunLauncher):
    """DefaultRunLauncher whose run workers run monitoring can check when they run on this host."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return (PROC / "self" / "stat").exists()

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        if not worker_on_this_host(run):
            return CheckRunHealthResult(WorkerStatus.RUNNING, "run worker on another host: not checked")
        records = self._instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_START,
                                                     ascending=False, limit=1).records
        if not records or records[0].event_log_entry.dagster_event.pid is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "run worker not started yet")
        entry = records[0].event_log_entry
        pid = entry.dagster_event.pid
        started = process_start_time(pid)
        if started is None or started > entry.timestamp + START_TIME_SLACK_SECONDS:
            return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} is gone",
                                        run_worker_id=str(pid))
        return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))

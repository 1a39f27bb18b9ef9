"""Processes left behind: a killed `ingest --workers 2` takes its workers and the resource
tracker with it, and a killed first command on a fresh REGISTRY_HOME does not break the next
one (the embedded server's first start is atomic or waited for)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from registry.commands.reconcile import reconcile
from tests.helpers import RegistryRepo
from tests.reliability.conftest import run_registry, start_registry
from tests.reliability.scenarios import write_corpus

pytestmark = pytest.mark.reliability
GRACE_S = 5.0


def _descendants_once_workers_run(pid: int, timeout: float = 120) -> list[psutil.Process]:
    """The parent's children once two workers are up (the resource tracker is one more)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(pid).children(recursive=True)
        workers = [c for c in children if "spawn_main" in " ".join(_cmdline(c))]
        if len(workers) >= 2:
            time.sleep(0.5)  # initializers have run: the workers are chunking
            return psutil.Process(pid).children(recursive=True)
        time.sleep(0.05)
    raise AssertionError("the ingest never started its two workers")


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _survivors(processes: list[psutil.Process], within: float) -> list[str]:
    deadline = time.monotonic() + within
    alive = processes
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    return [f"{p.pid} {' '.join(_cmdline(p))[:80]}" for p in alive]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_ingest_leaves_no_worker_or_resource_tracker_behind(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, how: signal.Signals,
    figures: dict[str, Any],
) -> None:
    version = registry_repo.locked(chunk_size=120)
    reconcile(registry_repo.path, dsn=dsn, fetch=False)
    corpus = write_corpus(tmp_path / "corpus", 3000)
    proc = start_registry("ingest", version, "--repo", registry_repo.path, "--dsn", dsn,
                          "--source", corpus, "--tokenizer-file", registry_repo.tokenizer_file,
                          "--workers", "2")
    children: list[psutil.Process] = []
    try:
        children = _descendants_once_workers_run(proc.pid)
        assert proc.poll() is None, "the ingest finished before it could be killed"
        os.kill(proc.pid, how)  # the parent only, as an OOM killer or `kill PID` would
        proc.communicate(timeout=30)
        survivors = _survivors(children, GRACE_S)
    finally:
        for process in [*children, psutil.Process(proc.pid)] if proc.poll() is None else children:
            with contextlib.suppress(psutil.Error):
                process.kill()
    figures.setdefault("orphans after a killed ingest", {})[how.name] = {
        "children": len(children), "alive after 5 s": len(survivors)}
    assert len(children) >= 3, [(c.pid, _cmdline(c)) for c in children]
    assert survivors == []


@pytest.mark.parametrize("delay", [0.3, 0.8, 1.2, 1.6, 2.2, 3.0])
def test_a_killed_first_start_does_not_break_the_next_command(
    tmp_path: Path, delay: float, figures: dict[str, Any]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    for parent in (home, *home.parents):  # the server user (under root) must traverse them
        if parent != Path("/"):
            os.chmod(parent, os.stat(parent).st_mode | 0o005)
    env = {"REGISTRY_HOME": str(home), "REGISTRY_DSN": "embedded"}
    first = start_registry("db", "url", env=env)
    time.sleep(delay)
    first.kill()
    first.communicate(timeout=30)
    try:
        after = run_registry("db", "url", env=env, timeout=180)
        again = run_registry("db", "url", env=env, timeout=60)
    finally:
        run_registry("db", "stop", env=env, timeout=120)
    figures.setdefault("next command after a killed first start", {})[f"{delay}s"] = (
        after.returncode)
    assert (after.returncode, again.returncode) == (0, 0), after.stderr + again.stderr
    assert after.stdout == again.stdout and after.stdout.startswith("postgresql://")
    assert not list(home.glob("postgres.init-*"))
    shutil.rmtree(home, ignore_errors=True)

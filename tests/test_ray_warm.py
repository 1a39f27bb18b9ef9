"""The task workers `warm_task_workers` starts during the chunk stage are the ones the dedup
steps run in, on a local Ray of `ray_session`'s own: they survive the stage's wait idle (Ray's
default kills an idle worker after 1 s beyond one per CPU) while the chunk actors hold the
CPUs, so no dedup step waits for new processes (marker `ray`: starts a local Ray)."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")


def test_warmed_task_workers_outlive_the_chunk_stage_and_run_the_dedup_tasks() -> None:
    from registry.ingest.ray_engine import _warm, ray_session, warm_task_workers, worker_options

    if ray.is_initialized():
        pytest.skip("a Ray driver is already connected in this process")
    with ray_session(None, 2):
        remote = worker_options()

        @ray.remote(num_cpus=1)
        class Holder:
            """A chunk actor's stand-in: holds a CPU until told to stop."""

            def pid(self) -> int:
                return os.getpid()

        holders = [Holder.options(**remote).remote() for _ in range(2)]  # type: ignore[attr-defined]
        warmed = set(ray.get(warm_task_workers(2, remote), timeout=300))
        held = set(ray.get([h.pid.remote() for h in holders], timeout=300))
        assert not warmed & held
        time.sleep(4)  # the chunk stage goes on: idle well past Ray's 1 s default
        for holder in holders:
            ray.kill(holder)
        task = ray.remote(_warm).options(**remote)
        ran = set(ray.get([task.remote() for _ in range(8)], timeout=300))
        assert ran <= warmed, (ran, warmed)

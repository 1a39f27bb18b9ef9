"""The Ray ingest on a cluster that has GPUs (issue 19): an onnx pin's embedding actors take a
GPU each, one per GPU, and embed exactly what the built-in ingest embeds. This machine has no
GPU, so the node declares one (Ray schedules by declared resources; onnxruntime then finds no
GPU provider and runs on the CPU): what is tested is the scheduling and the actors' settings,
not a CUDA kernel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.commands.data import ingest
from tests.helpers import RegistryRepo
from tests.test_ray_ingest import (  # noqa: F401 (fixtures)
    NODE_STORE,
    clear_embedding_cache,
    embedding_shadow,
    last_run,
    near_duplicate_corpus,
    rows_of,
    staging_tables,
    vectors_of,
)

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1200)]


@pytest.fixture
def gpu_cluster() -> Iterator[Cluster]:
    """One Ray node of two CPUs and one (declared) GPU; the test process is its driver."""
    if ray.is_initialized():
        pytest.skip("a Ray driver is already connected in this process")
    node = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 1, "object_store_memory": NODE_STORE,
        "include_dashboard": False})
    ray.init(address=node.address, log_to_driver=False)
    try:
        yield node
    finally:
        ray.shutdown()
        node.shutdown()


def test_on_a_cluster_with_a_gpu_an_onnx_pin_embeds_in_one_actor_per_gpu(
    embedding_shadow: tuple[RegistryRepo, str, str], gpu_cluster: Cluster,  # noqa: F811
    tmp_path: Path
) -> None:
    import numpy as np

    repo, version, dsn = embedding_shadow
    source = near_duplicate_corpus(tmp_path / "corpus")
    on_ray = ingest(repo.path, version, source, dsn=dsn, dedup="corpus", workers=2,
                    engine="ray", ray_address=gpu_cluster.address, shard_documents=4)
    record = last_run(dsn)["details"]["ray"]
    assert record["gpus"] == 1
    assert record["embedding_actors"] == {"count": 1, "gpu_each": True}
    assert on_ray.vectors_computed == on_ray.chunks == len(rows_of(dsn, version))
    rows, vectors = rows_of(dsn, version), vectors_of(dsn, version)

    clear_embedding_cache(dsn)
    ingest(repo.path, version, source, dsn=dsn, dedup="corpus", workers=1)
    assert rows_of(dsn, version) == rows
    again = vectors_of(dsn, version)
    assert max(float(np.abs(a - b).max()) for (_, a), (_, b) in zip(again, vectors,
                                                                     strict=True)) < 1e-4
    assert staging_tables(dsn) == []


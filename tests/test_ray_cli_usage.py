"""`--engine` and `--ray-address` misuse is a usage error (exit 2) before any work: no Ray
started, no database touched (default suite; the Ray runs themselves are under the `ray`
marker in tests/test_ray_ingest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import RegistryRepo, run_cli


def test_ray_address_without_the_ray_engine_is_a_usage_error(
    registry_repo: RegistryRepo, tmp_path: Path
) -> None:
    version = registry_repo.locked()
    result = run_cli("ingest", version, "--repo", registry_repo.path, "--source", tmp_path,
                     "--dsn", "postgresql://nobody@127.0.0.1:1/none", "--ray-address",
                     "127.0.0.1:6379")
    assert result.code == 2, result
    assert "--ray-address goes with --engine ray" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_engine_options_without_source_are_a_usage_error(registry_repo: RegistryRepo) -> None:
    for extra in (["--engine", "ray"], ["--ray-address", "head:6379"]):
        result = run_cli("reconcile", "--repo", registry_repo.path, "--dsn",
                         "postgresql://nobody@127.0.0.1:1/none", *extra)
        assert result.code == 2, result
        assert "go with --source" in result.stderr


def test_an_unknown_engine_is_refused_by_the_cli(registry_repo: RegistryRepo, tmp_path: Path
                                                 ) -> None:
    result = run_cli("ingest", "v", "--repo", registry_repo.path, "--source", tmp_path,
                     "--engine", "spark")
    assert result.code == 2


def test_the_ray_engine_checks_a_pinned_embedder_before_any_work_as_the_builtin_does(
    registry_repo: RegistryRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedder is built and fingerprinted by the driver before Ray starts or the database
    is touched: an endpoint that refuses the token is the same one-line refusal (exit 12) on
    both engines."""
    from registry.embedding.openai import TOKEN_ENV, URL_ENV
    from registry.embedding.spec import EmbedderSpec
    from registry.tokenizer import file_hash
    from tests.embedding.conftest import needs_minilm

    if needs_minilm.args[0]:
        pytest.skip(needs_minilm.kwargs["reason"])
    from registry.embedding.onnx import OnnxEmbedder
    from tests.embedding_server import FakeEmbeddings

    spec = EmbedderSpec(backend="openai", name="minilm", dimension=384, normalize=True,
                        max_tokens=512, tokenizer_hash=file_hash(registry_repo.tokenizer_file),
                        fingerprint="sha256:" + "12" * 32)
    version = registry_repo.locked(chunk_size=200, embedder_spec=spec)
    with FakeEmbeddings(OnnxEmbedder.installed("all-MiniLM-L6-v2-int8"), token="right") as server:
        monkeypatch.setenv(URL_ENV, server.base_url)
        monkeypatch.setenv(TOKEN_ENV, "wrong")
        results = [run_cli("ingest", version, "--repo", registry_repo.path, "--source", tmp_path,
                           "--dsn", "postgresql://nobody@127.0.0.1:1/none", *engine)
                   for engine in ((), ("--engine", "ray"))]
    builtin, on_ray = results
    assert builtin.code == 12, builtin
    assert (on_ray.code, on_ray.stderr) == (builtin.code, builtin.stderr)
    assert "401" in on_ray.stderr and "Ray" not in on_ray.stderr and "wrong" not in on_ray.stderr
    assert len(on_ray.stderr.strip().splitlines()) == 1


def test_an_openai_embedder_ships_its_own_endpoint_and_token_never_in_a_repr(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Ray actors rebuild an embedder from is the embedder the driver was given (not
    whatever the driver's environment holds), and printing the shipment shows neither the
    token nor model bytes; an embedder of another kind is refused in one line."""
    from registry.embedding.openai import TOKEN_ENV, URL_ENV, OpenAIEmbedder
    from registry.errors import UsageError
    from registry.ingest.ray_engine import ship_embedder
    from tests.helpers import locked_config

    monkeypatch.setenv(URL_ENV, "http://elsewhere.invalid/v1")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    embedder = OpenAIEmbedder("minilm", base_url="http://127.0.0.1:8123/v1/",
                              token="sk-secret-token", dimension=384)
    shipped = ship_embedder(locked_config(), embedder)
    assert shipped.settings == {URL_ENV: "http://127.0.0.1:8123/v1",
                                TOKEN_ENV: "sk-secret-token"}
    rebuilt = OpenAIEmbedder.from_spec(embedder.spec, env=shipped.settings)
    assert rebuilt.endpoint == embedder.endpoint
    assert "sk-secret-token" not in repr(shipped)

    class Other:
        spec = embedder.spec

    with pytest.raises(UsageError, match="ships onnx and openai embedders"):
        ship_embedder(locked_config(), Other())  # type: ignore[arg-type]

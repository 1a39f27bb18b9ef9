"""Tokenizers in CI without the network: a file pinned in the registry repo is found and
checked; an unreachable hub fails at once (never retried) with one whole line on how to
provide the tokenizer."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from registry.errors import TokenizerUnavailable
from registry.tokenizer import file_hash, pinned_path, resolve
from tests.helpers import RegistryRepo, run_cli


@pytest.fixture
def hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> str:
    """HF_HUB_OFFLINE unset and HF_ENDPOINT on a closed local port: what a firewalled runner
    sees, where the hub client used to retry for 24 s."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


def test_an_unreachable_hub_fails_in_under_a_second_with_one_whole_line(
    hub_unreachable: str,
) -> None:
    started = time.monotonic()
    with pytest.raises(TokenizerUnavailable) as caught:
        resolve("acme/private-tokenizer", allow_download=True)
    elapsed = time.monotonic() - started

    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    line = str(caught.value)
    assert "\n" not in line and hub_unreachable in line
    assert "tokenizers/<name>/tokenizer.json" in line and "--tokenizer-file" in line
    assert line.endswith("that holds it)")  # whole, not cut mid-word


def test_validate_strict_offline_reports_the_missing_tokenizer_at_once(
    registry_repo: RegistryRepo, hub_unreachable: str
) -> None:
    version = registry_repo.locked()

    started = time.monotonic()
    result = run_cli("validate", "--repo", registry_repo.path, "--strict")
    elapsed = time.monotonic() - started

    assert result.code == 1
    assert elapsed < 2.0, f"took {elapsed:.2f}s"
    problem = next(line for line in result.stdout.splitlines() if "tokenizer" in line)
    assert problem.startswith(f"configs/{version}.yaml:1: cannot check the tokenizer hash")
    assert "commit it as tokenizers/<name>/tokenizer.json" in problem


def test_a_tokenizer_pinned_in_the_repo_is_checked_against_each_config(
    registry_repo: RegistryRepo, hub_unreachable: str
) -> None:
    version = registry_repo.locked()
    pinned = registry_repo.path / "tokenizers" / "BAAI" / "bge-large-en-v1.5" / "tokenizer.json"
    pinned.parent.mkdir(parents=True)
    pinned.write_bytes(registry_repo.tokenizer_file.read_bytes())

    assert run_cli("validate", "--repo", registry_repo.path, "--strict").code == 0

    pinned.write_bytes(pinned.read_bytes().replace(b'"[UNK]"', b'"[unk]"', 1))
    result = run_cli("validate", "--repo", registry_repo.path, "--strict")
    assert result.code == 1
    assert f"configs/{version}.yaml:1: tokenizer BAAI/bge-large-en-v1.5 at {pinned} hashes to " \
           f"{file_hash(pinned)}" in result.stdout


@pytest.mark.parametrize("name", ["../escape", "/abs", "a//b", "a/./b", ""])
def test_a_tokenizer_name_never_reaches_outside_tokenizers(tmp_path: Path, name: str) -> None:
    (tmp_path / "escape").mkdir()
    (tmp_path / "escape" / "tokenizer.json").write_text("{}")
    assert pinned_path(tmp_path / "repo", name) is None

"""Tampering and trust: what may reach production.

`registry reconcile --require-signed` applies only a commit (or an annotated tag given as
--ref) whose SSH signature verifies against an allowed-signers file, as Flux's `verify` does;
keys are made with ssh-keygen and commits signed by git itself (`gpg.format ssh`). An unsigned
head, a head signed by a key nobody allowed, and a signature copied onto other content are
refused before any SQL. And the reconciler, like `registry validate`, refuses a locked config
edited after its tag; validate also reports a moved tag and a config that skipped review, at
a committed ref as in the working tree.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.database import Database, table_of
from tests.helpers import RegistryRepo, run_cli

pytestmark = pytest.mark.reliability
REFUSED = 7


@dataclass
class Keys:
    alice: Path
    mallory: Path
    allowed: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    """Two ed25519 keys; only Alice's is in the allowed signers file."""
    made = {}
    for name in ("alice", "mallory"):
        path = tmp_path / "keys" / name
        path.parent.mkdir(exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f",
                        str(path)], check=True, timeout=30)
        made[name] = path
    allowed = tmp_path / "keys" / "allowed_signers"
    public = made["alice"].with_suffix(".pub").read_text().split()
    allowed.write_text(f"alice@example.com {public[0]} {public[1]}\n")
    return Keys(made["alice"], made["mallory"], allowed)


def sign_with(repo: RegistryRepo, key: Path | None) -> None:
    """Sign every later commit, merge and tag of the clone with `key` (None: stop signing)."""
    if key is None:
        repo.git("config", "commit.gpgsign", "false")
        return
    repo.git("config", "gpg.format", "ssh")
    repo.git("config", "user.signingkey", str(key))
    repo.git("config", "commit.gpgsign", "true")


def reconcile(repo: RegistryRepo, dsn: str, *extra: str) -> Any:
    return run_cli("reconcile", "--repo", repo.path, "--dsn", dsn, "--require-signed", *extra)


def untouched(dsn: str) -> bool:
    """Not even the bookkeeping schema exists: nothing ran."""
    return Database(dsn).query("SELECT to_regnamespace('chunk_registry')") == [(None,)]


def refused_by_signers(repo: RegistryRepo, dsn: str, keys: Keys, *extra: str) -> str:
    """A reconcile against `keys`' allowed signers: it must be refused with nothing applied;
    what it said."""
    refused = reconcile(repo, dsn, "--allowed-signers", keys.allowed, *extra)
    assert refused.code == REFUSED, refused.stderr
    assert untouched(dsn)
    return str(refused.stderr)


def test_a_head_signed_by_an_allowed_key_is_applied(
    registry_repo: RegistryRepo, dsn: str, keys: Keys, figures: dict[str, Any]
) -> None:
    sign_with(registry_repo, keys.alice)
    version = registry_repo.locked()

    applied = reconcile(registry_repo, dsn, "--allowed-signers", keys.allowed)

    assert applied.code == 0, applied.stderr
    assert Database(dsn).tables() == [table_of(version)]
    assert registry_repo.git("-c", f"gpg.ssh.allowedSignersFile={keys.allowed}", "log",
                                    "-1", "--format=%G?", "origin/main") == "G"


def test_an_unsigned_head_is_refused_and_nothing_is_applied(
    registry_repo: RegistryRepo, dsn: str, keys: Keys
) -> None:
    sign_with(registry_repo, keys.alice)
    registry_repo.locked()
    sign_with(registry_repo, None)
    registry_repo.locked(chunk_size=300)

    stderr = refused_by_signers(registry_repo, dsn, keys)

    assert re.fullmatch(r"error: commit [0-9a-f]{10} \(origin/main\) is not signed by an allowed "
                        r"signer: it carries no signature; nothing was applied \(sign the merge "
                        r"with a key listed in .*\)\n", stderr), stderr


def test_a_head_signed_by_a_key_nobody_allowed_is_refused(
    registry_repo: RegistryRepo, dsn: str, keys: Keys
) -> None:
    sign_with(registry_repo, keys.mallory)
    registry_repo.locked()

    stderr = refused_by_signers(registry_repo, dsn, keys)

    assert "signed by a key that is not in the allowed signers file" in stderr


def test_a_signature_copied_onto_other_content_is_refused(
    registry_repo: RegistryRepo, dsn: str, keys: Keys
) -> None:
    sign_with(registry_repo, keys.alice)
    registry_repo.locked()
    signed = registry_repo.git("cat-file", "commit", "HEAD")
    sign_with(registry_repo, None)
    other = registry_repo.locked(chunk_size=300)
    other_tree = registry_repo.git("rev-parse", "HEAD^{tree}")
    forged = re.sub(r"^tree [0-9a-f]+$", f"tree {other_tree}", signed, count=1, flags=re.M)
    sha = subprocess.run(["git", "-C", str(registry_repo.path), "hash-object", "-t", "commit",
                          "-w", "--stdin"], input=forged + "\n", capture_output=True, text=True,
                         check=True).stdout.strip()

    stderr = refused_by_signers(registry_repo, dsn, keys, "--ref", sha)

    assert f"commit {sha[:10]}" in stderr and other


def test_the_allowed_signers_file_comes_from_git_config_and_must_exist(
    registry_repo: RegistryRepo, dsn: str, keys: Keys
) -> None:
    sign_with(registry_repo, keys.alice)
    version = registry_repo.locked()

    missing = reconcile(registry_repo, dsn)
    registry_repo.git("config", "gpg.ssh.allowedSignersFile", str(keys.allowed))
    configured = reconcile(registry_repo, dsn)
    wrong = reconcile(registry_repo, dsn, "--allowed-signers", keys.allowed.with_name("nope"))

    assert missing.code == 2 and "--require-signed needs an allowed signers file" in missing.stderr
    assert configured.code == 0, configured.stderr
    assert wrong.code == 2 and "does not exist" in wrong.stderr
    assert Database(dsn).tables() == [table_of(version)]


def test_a_signed_annotated_tag_vouches_for_an_unsigned_commit(
    registry_repo: RegistryRepo, dsn: str, keys: Keys
) -> None:
    version = registry_repo.locked()
    registry_repo.git("-c", "gpg.format=ssh", "-c", f"user.signingkey={keys.alice}", "tag", "-s",
                      "-m", "release 1", "release-1", "main")
    registry_repo.git("tag", "-a", "-m", "unsigned", "release-2", "main")

    by_tag = reconcile(registry_repo, dsn, "--allowed-signers", keys.allowed, "--ref",
                       "release-2")
    tables_after_unsigned_tag = Database(dsn).tables()
    signed = reconcile(registry_repo, dsn, "--allowed-signers", keys.allowed, "--ref",
                       "release-1")

    assert by_tag.code == REFUSED and "tag release-2 is not signed" in by_tag.stderr
    assert tables_after_unsigned_tag == []
    assert signed.code == 0, signed.stderr
    assert Database(dsn).tables() == [table_of(version)]


def test_watch_with_require_signed_skips_an_unsigned_commit_and_applies_the_next_signed_one(
    registry_repo: RegistryRepo, dsn: str, keys: Keys
) -> None:
    import threading

    from registry.commands.reconcile import watch

    sign_with(registry_repo, keys.alice)
    v1 = registry_repo.locked()
    sign_with(registry_repo, None)
    registry_repo.git("commit", "--quiet", "--allow-empty", "-m", "Unsigned")
    registry_repo.git("push", "--quiet", "origin", "main")
    stop = threading.Event()
    results: list[Any] = []
    worker = threading.Thread(target=watch, args=(registry_repo.path,), kwargs={
        "stop": stop, "interval": 0.2, "on_result": results.append, "dsn": dsn,
        "require_signed": True, "allowed_signers": keys.allowed}, daemon=True)
    worker.start()
    try:
        import time

        time.sleep(1.5)
        refused_meanwhile = untouched(dsn)
        sign_with(registry_repo, keys.alice)
        registry_repo.git("commit", "--quiet", "--allow-empty", "-m", "Signed by Alice")
        registry_repo.git("push", "--quiet", "origin", "main")
        deadline = time.monotonic() + 30
        while not results and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(timeout=30)

    assert refused_meanwhile
    assert results and results[0].plan.commit == registry_repo.head()
    assert Database(dsn).tables() == [table_of(v1)]


# ---------------------------------------------------------------------------------------------
# Tampering: what `registry validate` reports, at a committed ref, and what reconcile refuses


def locked_text(repo: RegistryRepo, version: str) -> str:
    return (repo.path / "configs" / f"{version}.yaml").read_text()


def test_a_tampered_config_is_reported_at_a_ref_and_refused_by_the_reconciler(
    registry_repo: RegistryRepo, dsn: str
) -> None:
    version = registry_repo.locked()
    assert run_cli("tag", "--repo", registry_repo.path, "--push").code == 0
    text = locked_text(registry_repo, version).replace("chunk_size: 450", "chunk_size: 300")
    registry_repo.write(f"configs/{version}.yaml", text, message="quietly edit a locked config")

    validated = run_cli("validate", "--repo", registry_repo.path, "--ref", "origin/main")
    refused = run_cli("reconcile", "--repo", registry_repo.path, "--dsn", dsn)
    planned = run_cli("plan", "--repo", registry_repo.path, "--dsn", dsn)

    expected = (f"configs/{version}.yaml:1: configs/{version}.yaml differs from the locked blob "
                f"tagged chunk-config/{version} (tampering: a locked config is immutable)")
    assert validated.code == 1 and any(line.startswith(expected) for line in validated.lines)
    assert refused.code == 1 and refused.stderr.startswith(f"error: {expected}")
    assert planned.code == 1
    assert untouched(dsn)


def test_a_moved_tag_and_a_config_that_skipped_review_are_reported_at_a_ref(
    registry_repo: RegistryRepo,
) -> None:
    first = registry_repo.locked()
    assert run_cli("tag", "--repo", registry_repo.path).code == 0
    second = registry_repo.lock(chunk_size=300)
    registry_repo.merge(f"lock/{second}", how="rebase")  # straight to main, no merge commit
    registry_repo.git("tag", "-f", "-a", f"chunk-config/{first}", "-m", "moved", "main")

    report = run_cli("validate", "--repo", registry_repo.path, "--ref", "main")

    assert report.code == 1
    assert any(line.startswith(f"configs/{first}.yaml:1: tag chunk-config/{first} was moved")
               for line in report.lines), report.stdout
    assert any(line.startswith(f"warning: configs/{second}.yaml:1: ") and "without a pull "
               "request" in line for line in report.lines), report.stdout

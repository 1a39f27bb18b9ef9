"""What makes `validate` and `plan` linear in configs (issue 20) must not change an answer: the
batched tag lookups say what one lookup per tag says, a config parsed once per process is the
config parsed again, the history read once per commit is the history read again."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import registry.repository.git as git_module
from registry.config import config_path
from registry.repository import history as history_module
from registry.repository import state as state_module
from registry.repository.git import Git
from registry.repository.history import read_history
from registry.repository.state import WORKTREE, read_state
from registry.repository.validation import validate

COUNT = 80
"""Above git.BATCH_READ_FROM (64): the tag lookups go through one fed cat-file."""


def config_text(i: int) -> tuple[str, str]:
    version = f"2026-01-01-{(i // 60) % 60:02d}{i % 60:02d}00-v1"
    return version, (
        f"schema_version: 1\nchunk_version: {version}\nchunk_size: {100 + i}\n"
        "overlap_ratio: 0.1\njaccard_threshold: 0.8\nprefix_policy: A\n"
        "embedder_name: BAAI/bge-large-en-v1.5\nembedder_max_tokens: 512\n"
        "tokenizer_name: BAAI/bge-large-en-v1.5\n"
        f"tokenizer_hash: sha256:{i:064x}\ncreated_at: '2026-01-01T00:00:00Z'\n"
        "created_by: Test <test@example.com>\nbaseline_metrics: {oracle_hit_rate: 0.47}\n")


def build(repo: Path, count: int) -> list[str]:
    """`count` configs on main, one squash-merged commit and one annotated tag each (one
    `git fast-import`, as bench/scale_bench.py builds them); the versions, oldest first."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    stream: list[bytes] = []
    versions = []

    def data(text: str) -> None:
        raw = text.encode()
        stream.append(b"data %d\n" % len(raw) + raw + b"\n")

    def commit(mark: int, subject: str, path: str, body: str) -> None:
        stream.append(f"commit refs/heads/main\nmark :{mark}\n"
                      f"committer Test <test@example.com> {1_700_000_000 + mark} +0000\n".encode())
        data(subject)
        if mark > 1:
            stream.append(f"from :{mark - 1}\n".encode())
        stream.append(f"M 100644 inline {path}\n".encode())
        data(body)

    commit(1, "Start the registry (#1)", "configs/production.yaml", "production: null\n")
    for i in range(count):
        version, body = config_text(i)
        versions.append(version)
        commit(i + 2, f"Lock {version} (#{i + 2})", config_path(version), body)
        stream.append(f"tag chunk-config/{version}\nfrom :{i + 2}\n"
                      f"tagger Test <test@example.com> {1_700_000_000 + i} +0000\n".encode())
        data(f"lock {version}")
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet"], input=b"".join(stream),
                   check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "main"], check=True)
    return versions


def run_git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def scaled(tmp_path: Path) -> tuple[Path, list[str]]:
    """The repository, with a lightweight, a moved, a missing, a fileless and an off-main tag
    and a tampered config in the working tree."""
    repo = tmp_path / "repo"
    versions = build(repo, COUNT)
    tag = "chunk-config/{}".format
    light, moved, missing, fileless, off_main, tampered = (versions[i] for i in (5, 7, 9, 13,
                                                                                 17, 21))
    run_git(repo, "tag", "-f", tag(light), f"{tag(light)}^{{commit}}")
    run_git(repo, "tag", "-f", "-a", "-m", "moved", tag(moved), "main")
    run_git(repo, "tag", "-d", tag(missing))
    run_git(repo, "tag", "-f", "-a", "-m", "fileless", tag(fileless), "main~" + str(COUNT))
    side = run_git(repo, "commit-tree", "-p", "main", "-m", "side", run_git(repo, "rev-parse",
                                                                            "main^{tree}"))
    run_git(repo, "tag", "-f", "-a", "-m", "off main", tag(off_main), side)
    path = repo / config_path(tampered)
    path.write_text(path.read_text().replace("prefix_policy: A", "prefix_policy: B"))
    return repo, versions


def rendered(repo: Path) -> list[tuple[str, int, str, str | None, str]]:
    git = Git(repo)
    report = validate(git, read_state(git, WORKTREE))
    return [(p.path, p.line, p.message, p.fix, p.severity) for p in report.problems]


def cold(repo: Path) -> None:
    """A fresh clone's state: no parse cache on disk, nothing parsed in this process."""
    shutil.rmtree(repo / ".git" / "chunk-registry", ignore_errors=True)
    state_module._PARSED.clear()


def test_batched_tag_lookups_report_what_one_lookup_per_tag_reports(
    scaled: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo, versions = scaled
    cold(repo)
    batched = rendered(repo)
    warm = rendered(repo)
    cold(repo)
    monkeypatch.setattr(git_module, "BATCH_READ_FROM", 10**9)
    one_by_one = rendered(repo)

    assert batched == one_by_one == warm
    messages = [message for _path, _line, message, _fix, _severity in batched]
    tag = "chunk-config/{}".format
    assert f"tag {tag(versions[5])} is a lightweight tag" in messages
    assert any(m.startswith(f"tag {tag(versions[7])} was moved") for m in messages)
    assert any(m.startswith(f"{versions[9]} has no lock tag") for m in messages)
    assert any(m.startswith(f"tag {tag(versions[13])} points to commit") and "which has no"
               in m for m in messages)
    assert any(m.startswith(f"tag {tag(versions[17])} points to commit") and "not on main"
               in m for m in messages)
    assert any("tampering" in m and versions[21] in m for m in messages)
    assert not any(versions[30] in m for m in messages)


def test_configs_follow_the_files_and_parses_are_shared(scaled: tuple[Path, list[str]]) -> None:
    repo, versions = scaled
    cold(repo)
    git = Git(repo)
    first = read_state(git, "main", use_cache=False)
    again = read_state(git, "main", use_cache=False)
    cold(repo)
    fresh = read_state(Git(repo), "main", use_cache=False)
    assert first.configs == again.configs == fresh.configs
    assert first.problems == again.problems == fresh.problems
    assert sorted(first.configs) == versions

    # The memo of `configs` follows the files: a file removed, added or replaced.
    gone = config_path(versions[0])
    removed = first.files.pop(gone)
    assert versions[0] not in first.configs
    first.files[gone] = removed
    assert versions[0] in first.configs
    first.files = {}
    assert first.configs == {}


def test_a_renamed_blob_is_parsed_at_its_new_path(tmp_path: Path) -> None:
    """The same bytes at another path: the parse (whose problems name the path) is not the
    one made at the first path."""
    repo = tmp_path / "repo"
    versions = build(repo, 2)
    cold(repo)
    git = Git(repo)
    assert not read_state(git, WORKTREE).problems
    run_git(repo, "mv", config_path(versions[1]), "configs/2026-02-02-000000-v1.yaml")
    problems = read_state(git, WORKTREE).problems
    assert [(p.path, p.message) for p in problems] == [
        ("configs/2026-02-02-000000-v1.yaml",
         f"file name does not match chunk_version {versions[1]}")]


def test_history_is_read_once_per_commit_and_sees_a_new_one(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    versions = build(repo, 3)
    git = Git(repo)
    full = read_history(git, "main")
    assert [e.chunk_version for e in full if e.kind == "lock"] == versions[::-1]
    assert all(e.tag == f"chunk-config/{e.chunk_version}" for e in full if e.kind == "lock")
    untagged = read_history(git, "main", tags=False)
    assert [(e.kind, e.chunk_version, e.commit) for e in untagged] == \
        [(e.kind, e.chunk_version, e.commit) for e in full]
    assert all(e.tag is None for e in untagged)
    assert len(history_module._LOGS[git]) == 1

    run_git(repo, "rm", "-q", config_path(versions[0]))
    run_git(repo, "commit", "-q", "-m", "Retire it (#9)")
    events = read_history(git, "main")
    assert (events[0].kind, events[0].chunk_version) == ("retire", versions[0])
    assert read_history(Git(repo), "main") == events


def pathspec_log(git: Git, ref: str) -> list[tuple[object, list[str]]]:
    """The history's log as it was read before: one `git log --first-parent -p -- configs/`
    (paths made relative to configs/, as the --relative log gives them)."""
    out = git.run("log", "--first-parent", "--diff-merges=first-parent", "-p", "-U0",
                  "--no-renames", "--no-color", "--no-ext-diff",
                  f"--format={history_module._FORMAT}", ref, "--", "configs/")
    return [(commit, [line.replace(" a/configs/", " a/").replace(" b/configs/", " b/")
                      if line.startswith("diff --git ") else line for line in diff])
            for commit, diff in history_module._parse(out)]


def test_history_picked_by_tree_sha_is_the_pathspec_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Merges, commits outside configs/, a retirement, promotions, a rollback, an environment:
    the events are those of the log limited by the pathspec."""
    repo = tmp_path / "repo"
    versions = build(repo, 3)
    one, two, three = versions
    production = repo / "configs" / "production.yaml"
    environments = repo / "configs" / "environments"

    def commit(message: str) -> None:
        run_git(repo, "add", "-A")
        run_git(repo, "commit", "-q", "-m", message)

    (repo / "README.md").write_text("outside configs/\n")
    commit("Docs only")
    run_git(repo, "checkout", "-q", "-b", "promote")
    production.write_text(f"production: {two}\n")
    environments.mkdir()
    (environments / "staging.yaml").write_text(f"serves: {three}\n")
    commit("Promote")
    (repo / "README.md").write_text("outside configs/, on the branch\n")
    commit("Docs on the branch")
    run_git(repo, "checkout", "-q", "main")
    run_git(repo, "merge", "-q", "--no-ff", "-m", "Merge pull request #7 from promote", "promote")
    run_git(repo, "rm", "-q", config_path(one))
    commit("Retire (#8)")
    production.write_text(f"production: {three}\n")
    commit("Promote again (#9)")
    production.write_text(f"production: {two}\n")
    commit("Roll back (#10)")
    run_git(repo, "checkout", "-q", "-b", "side", "main~2")
    (repo / "README.md").write_text("a merge that leaves configs/ alone\n")
    commit("Docs, side")
    run_git(repo, "checkout", "-q", "main")
    run_git(repo, "merge", "-q", "--no-ff", "-m", "Merge docs", "side")

    picked = {env: read_history(Git(repo), "main", env) for env in ("production", "staging")}
    monkeypatch.setattr(history_module, "_log", pathspec_log)
    assert picked == {env: read_history(Git(repo), "main", env)
                      for env in ("production", "staging")}
    kinds = [(e.kind, e.chunk_version) for e in picked["production"]]
    assert ("retire", one) in kinds and ("rollback", two) in kinds
    assert ("promote", three) in [(e.kind, e.chunk_version) for e in picked["staging"]]

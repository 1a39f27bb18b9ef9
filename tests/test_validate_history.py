"""`registry validate`'s history checks (tags, provenance) answered from the tags in a fixed
number of git calls must say what the full `git log` of every introduction says."""

from __future__ import annotations

import json

from registry.repository.git import Git
from registry.repository.state import read_state
from registry.repository.validation import main_history
from tests.helpers import RegistryRepo, run_cli


def problems(registry_repo: RegistryRepo) -> list[str]:
    result = run_cli("validate", "--repo", registry_repo.path, "--format", "json",
                     "--tokenizer-file", f"BAAI/bge-large-en-v1.5={registry_repo.tokenizer_file}")
    return [p["message"] for p in json.loads(result.stdout)["problems"]]


def test_moved_lightweight_and_direct_pushes_are_found_from_the_tags(
    registry_repo: RegistryRepo,
) -> None:
    kept, moved, light = (registry_repo.locked(chunk_size=size) for size in (300, 310, 320))
    assert run_cli("tag", "--repo", registry_repo.path).code == 0
    pushed = registry_repo.lock(chunk_size=330)
    registry_repo.git("checkout", "--quiet", "main")
    registry_repo.git("merge", "--quiet", "--ff-only", f"lock/{pushed}")
    registry_repo.git("push", "--quiet", "origin", "main")
    registry_repo.git("tag", "-f", "-a", "-m", "moved", f"chunk-config/{moved}", "HEAD")
    registry_repo.git("tag", "-d", f"chunk-config/{light}")
    registry_repo.git("tag", f"chunk-config/{light}", registry_repo.git(
        "log", "--format=%H", "--diff-filter=A", "main", "--", f"configs/{light}.yaml"))

    found = problems(registry_repo)

    assert any(m.startswith(f"tag chunk-config/{moved} was moved") for m in found)
    assert f"tag chunk-config/{light} is a lightweight tag" in found
    assert any(m.startswith(f"configs/{pushed}.yaml reached origin/main in commit") for m in found)
    assert not any(kept in m for m in found)
    git = Git(registry_repo.path)
    state = read_state(git, "main")
    exact = git.config_introductions("main")
    history = main_history(git, state, "main")
    assert {p: history.introduced[p] for p in state.files} == {p: exact[p] for p in state.files}

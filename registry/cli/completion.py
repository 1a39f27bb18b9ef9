"""Shell completion of VERSION arguments: the locked configs in the registry's configs/.

Runs on every Tab press, so it reads file names only (no git, no YAML): the versions in the
working tree of `--repo` (or the current directory), newest first, plus `production`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONFIG_DIR = "configs"
PRODUCTION_FILE = "production.yaml"
"""As in registry.repository.state, not imported from it: that import costs ~0.3 s a Tab."""


def config_versions(repo: Path) -> list[str]:
    """chunk_versions with a file in `repo`/configs, newest first."""
    directory = repo / CONFIG_DIR
    if not directory.is_dir():
        return []
    names = (p.stem for p in directory.glob("*.yaml") if p.name != PRODUCTION_FILE)
    return sorted(names, reverse=True)


def complete_version(ctx: Any, incomplete: str) -> list[str]:
    """Typer's autocompletion callback for a VERSION argument."""
    repo = Path((ctx.params or {}).get("repo") or ".")
    return [v for v in [*config_versions(repo), "production"] if v.startswith(incomplete)]

"""The Python API for applications: which table to read, and which config production uses.

Retrieval code calls `retrieval_table()` instead of hard-coding `document_chunks_<version>`
(the seed's get_retrieval_table): production reads the view, a shadow evaluation reads one
locked config's table. Both read the committed main branch of the registry repo (no fetch, no
database), so they are cheap enough to call at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

from registry.config import LockedConfig
from registry.errors import ConfigInvalid
from registry.repository.git import Git
from registry.repository.state import RegistryState, committed_state

REPO_ENV = "REGISTRY_REPO"


def _state(repo: Path | str | None) -> RegistryState:
    path = repo if repo is not None else os.environ.get(REPO_ENV, ".")
    return committed_state(Git(path))


def retrieval_table(
    use_shadow: bool = False, version: str | None = None, *, repo: Path | str | None = None
) -> str:
    """The qualified name to read: `public.document_chunks` (the production view), or with
    `use_shadow` the table of `version` (default: CHUNK_VERSION from the environment, as
    `registry env VERSION` exports it). The schema bounds both parts to `[a-z_][a-z0-9_]*`,
    so the name is usable as is; pass it to `psycopg.sql.Identifier` when building SQL."""
    state = _state(repo)
    settings = state.settings
    if not use_shadow and version is None:
        return _qualified(settings.schema, settings.base_name)
    chosen = version or os.environ.get("CHUNK_VERSION", "").strip()
    if not chosen:
        raise ConfigInvalid(
            "no shadow version to read", where="retrieval_table",
            fix='pass version="..." or export CHUNK_VERSION (eval "$(registry env VERSION)")',
        )
    config = state.config(chosen)
    return _qualified(settings.schema, settings.table_name(config.chunk_version))


def active_config(*, repo: Path | str | None = None) -> LockedConfig:
    """The production LockedConfig on the main branch (ConfigInvalid when there is none)."""
    return _state(repo).config("production")


def _qualified(schema: str, name: str) -> str:
    return f"{schema}.{name}"

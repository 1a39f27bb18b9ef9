"""chunk-registry: a git repository as the registry of locked RAG chunking configurations.

`registry.retrieval_table()`, `registry.record_outcome()`, `registry.active_config()`,
`registry.embedder_spec()` and `registry.retrieval_query()` are the application API; they
are imported on first use so `import registry` (and the CLI) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.serving import (
        Router,
        active_config,
        embedder_spec,
        record_outcome,
        retrieval_query,
        retrieval_table,
    )

__all__ = ["Router", "active_config", "embedder_spec", "record_outcome", "retrieval_query",
           "retrieval_table"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from registry import serving

        return getattr(serving, name)
    raise AttributeError(f"module 'registry' has no attribute {name!r}")

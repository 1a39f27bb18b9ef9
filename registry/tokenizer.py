"""Resolve a tokenizer (file path, local Hugging Face cache, hub when online) and hash it.

The hash is sha256 of the tokenizer.json bytes: the exact file that defines token counts, so a
locked config names the tokenizer it was measured with, not just a model name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from registry.errors import TokenizerUnavailable

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class ResolvedTokenizer:
    """Where a tokenizer.json was found, its hash, and how (file / cache / hub)."""

    name: str
    path: Path
    hash: str
    source: str

    def load(self) -> Tokenizer:
        return load_tokenizer(self.path)


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def hf_cache_dir() -> Path:
    """The hub cache as huggingface_hub defines it: HF_HUB_CACHE, HF_HOME/hub, XDG, ~/.cache."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def find_in_cache(name: str, cache: Path | None = None) -> Path | None:
    """tokenizer.json of model `name` in the hub cache, preferring the snapshot refs/main names."""
    repo_dir = (cache or hf_cache_dir()) / f"models--{name.replace('/', '--')}"
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip() / TOKENIZER_FILE
        if candidate.is_file():
            return candidate
    found = sorted(snapshots.glob(f"*/{TOKENIZER_FILE}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve(
    name: str, tokenizer_file: Path | None = None, *, allow_download: bool = True
) -> ResolvedTokenizer:
    """Find tokenizer `name`: an explicit file wins, then the local cache, then the hub."""
    if tokenizer_file is not None:
        path = Path(tokenizer_file)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerUnavailable(
                f"tokenizer file {path} does not exist", where="--tokenizer-file",
                fix="pass the path of a tokenizer.json",
            )
        load_tokenizer(path)
        return ResolvedTokenizer(name, path, file_hash(path), "file")
    cached = find_in_cache(name)
    if cached is not None:
        return ResolvedTokenizer(name, cached, file_hash(cached), "cache")
    if allow_download and not _offline():
        try:
            from huggingface_hub import hf_hub_download

            downloaded = Path(hf_hub_download(name, TOKENIZER_FILE, cache_dir=hf_cache_dir()))
        except Exception as err:  # network, auth and missing-repo errors all end the same way
            reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            raise TokenizerUnavailable(
                f"tokenizer {name} is not in the local Hugging Face cache ({hf_cache_dir()}) "
                f"and could not be downloaded: {reason}",
                fix="pass --tokenizer-file PATH/tokenizer.json, or download it where the hub "
                "is reachable",
            ) from None
        return ResolvedTokenizer(name, downloaded, file_hash(downloaded), "hub")
    raise TokenizerUnavailable(
        f"tokenizer {name} is not in the local Hugging Face cache ({hf_cache_dir()})"
        + (" and HF_HUB_OFFLINE is set" if _offline() else ""),
        fix="pass --tokenizer-file PATH/tokenizer.json",
    )


def load_tokenizer(path: Path) -> Tokenizer:
    """Load tokenizer.json with truncation and padding off: token counts are never clipped."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for unparsable files
        raise TokenizerUnavailable(
            f"{path} is not a valid tokenizer.json: {str(err).splitlines()[0][:160]}",
            fix="pass the tokenizer.json saved by the `tokenizers` library",
        ) from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def special_token_count(tokenizer: Tokenizer) -> int:
    """Tokens the post-processor adds to one sequence ([CLS] + [SEP] for BERT-style models)."""
    return int(tokenizer.num_special_tokens_to_add(False))


def require_hash(resolved: ResolvedTokenizer, expected: str, where: str) -> None:
    """Refuse to count tokens with a tokenizer other than the one the config was locked with."""
    if resolved.hash != expected:
        raise TokenizerUnavailable(
            f"tokenizer at {resolved.path} has hash {resolved.hash}, but the config was locked "
            f"with {expected}",
            where=where,
            fix="pass --tokenizer-file with the tokenizer.json the config was locked with",
        )

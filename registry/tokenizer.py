"""Resolve a tokenizer (file path, a file pinned in the registry repo, local Hugging Face cache,
hub when online) and hash it.

The hash is sha256 of the tokenizer.json bytes: the exact file that defines token counts, so a
locked config names the tokenizer it was measured with, not just a model name. A registry that
must validate without the network (CI, a private or locally trained tokenizer) pins the file at
`tokenizers/<name>/tokenizer.json`, or points HF_HUB_CACHE at a cache it restores.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import TokenizerUnavailable

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
PINNED_DIR = "tokenizers"
HUB_PROBE_SECONDS = 0.5
"""How long the hub may take to accept a TCP connection before it counts as unreachable: the
hub client would otherwise retry a refused connection for ~24 s."""
PROVIDE = (f"commit it as {PINNED_DIR}/<name>/{TOKENIZER_FILE} in the registry repo, pass "
           "--tokenizer-file, or point HF_HUB_CACHE at a cache that holds it")


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


def pinned_path(repo_root: Path, name: str) -> Path | None:
    """`tokenizers/<name>/tokenizer.json` of the registry repo, when the name is a plain
    relative path (never `..` or absolute) and the file exists."""
    parts = name.split("/")
    if not name or any(part in ("", ".", "..") or "\\" in part for part in parts):
        return None
    path = repo_root.joinpath(PINNED_DIR, *parts, TOKENIZER_FILE)
    return path if path.is_file() and not path.is_symlink() else None


def _one_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an error, cut at a word boundary (never mid-word) when long."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def hub_unreachable(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """Why the hub (HF_ENDPOINT) cannot be reached within `timeout`, or None when it can: a
    TCP connect, with name resolution bounded too (a thread, since getaddrinfo has no timeout)."""
    import socket
    import threading
    from urllib.parse import urlsplit

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: dict[str, str | None] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["error"] = None
        except OSError as err:
            outcome["error"] = f"{endpoint} is unreachable ({_one_line(err, 80)})"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" not in outcome:
        return f"{endpoint} did not answer within {timeout:g}s"
    return outcome["error"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve(
    name: str,
    tokenizer_file: Path | None = None,
    *,
    allow_download: bool = True,
    repo_root: Path | None = None,
) -> ResolvedTokenizer:
    """Find tokenizer `name`: an explicit file wins, then the file pinned in the registry repo,
    then the local cache, then the hub (only when it answers at once: never retried)."""
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
    pinned = pinned_path(repo_root, name) if repo_root is not None else None
    if pinned is not None:
        return ResolvedTokenizer(name, pinned, file_hash(pinned), "repo")
    cached = find_in_cache(name)
    if cached is not None:
        return ResolvedTokenizer(name, cached, file_hash(cached), "cache")
    missing = f"tokenizer {name} is not pinned in the repo nor in the Hugging Face cache " \
              f"({hf_cache_dir()})"
    if not allow_download or _offline():
        offline = " and HF_HUB_OFFLINE is set" if _offline() else ""
        raise TokenizerUnavailable(missing + offline, fix=PROVIDE)
    unreachable = hub_unreachable()
    if unreachable is not None:
        raise TokenizerUnavailable(f"{missing}, and {unreachable}", fix=PROVIDE)
    try:
        from huggingface_hub import hf_hub_download

        downloaded = Path(hf_hub_download(name, TOKENIZER_FILE, cache_dir=hf_cache_dir()))
    except Exception as err:  # network, auth and missing-repo errors all end the same way
        raise TokenizerUnavailable(
            f"{missing}, and could not be downloaded: {_one_line(err)}", fix=PROVIDE,
        ) from None
    return ResolvedTokenizer(name, downloaded, file_hash(downloaded), "hub")


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


def passage_prefix_tokens(tokenizer: Tokenizer, prefix: str) -> int | None:
    """Tokens of an embedder's passage prefix as the chunking tokenizer counts them (None
    without a prefix): the count `registry lock` and `registry tune` both hold against the
    token budget."""
    if not prefix:
        return None
    return len(tokenizer.encode(prefix, add_special_tokens=False).ids)


def require_hash(resolved: ResolvedTokenizer, expected: str, where: str) -> None:
    """Refuse to count tokens with a tokenizer other than the one the config was locked with."""
    if resolved.hash != expected:
        raise TokenizerUnavailable(
            f"tokenizer at {resolved.path} has hash {resolved.hash}, but the config was locked "
            f"with {expected}",
            where=where,
            fix="pass --tokenizer-file with the tokenizer.json the config was locked with",
        )


ADDITIVE_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Punctuation",
                           "Digits", "UnicodeScripts"}
LOCAL_NORMALIZERS = {"BertNormalizer", "Lowercase", "StripAccents", "NFD", "NFKD", "NFC", "NFKC",
                     "Strip", "Replace", "Prepend"}


def splits_on_whitespace(tokenizer: Tokenizer) -> bool:
    """Whether text split at whitespace (and at pre-token edges) tokenizes piece by piece:
    the pre-tokenizer splits on whitespace and drops it, and the normalizer works character
    by character. True for BERT-style WordPiece (BGE, E5, MiniLM); false for byte-level BPE,
    which keeps whitespace in its tokens."""
    spec = json.loads(tokenizer.to_str())

    def kinds(node: Any) -> list[str]:
        if not node:
            return []
        if node.get("type") == "Sequence":
            inner = node.get("pretokenizers") or node.get("normalizers") or []
            return [k for child in inner for k in kinds(child)]
        return [str(node.get("type"))]

    pre = kinds(spec.get("pre_tokenizer"))
    norm = kinds(spec.get("normalizer"))
    has_split = any(k in ("BertPreTokenizer", "Whitespace", "WhitespaceSplit") for k in pre)
    return (has_split and all(k in ADDITIVE_PRE_TOKENIZERS for k in pre)
            and all(k in LOCAL_NORMALIZERS for k in norm))

"""The search space of `registry tune`: ranges of the four chunking parameters, from the command
line (`--chunk-size 200:600`) or a file (`--space FILE`), always inside the guardrails a lock
enforces, so every trial is a config `registry lock` would accept.

A range outside the hard bounds of the schema (chunk 1..1000, overlap 0..0.5, Jaccard 0.5..1)
is refused. The token budget depends on the embedder (chunk_size + the 32-token prefix budget
+ the special tokens + a pinned embedder's passage prefix, within min(embedder_max_tokens,
1024)), so a chunk-size range reaching past it is cut at the largest size the lock would take
(found with the lock's own guardrail check), and the cut is said.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from registry.config import (
    MAX_CHUNK_SIZE,
    MAX_OVERLAP_RATIO,
    MIN_JACCARD,
    PREFIX_BUDGET_TOKENS,
    LockedConfig,
    guardrail_violations,
    parse_yaml,
)
from registry.errors import ConfigInvalid, UsageError

DEFAULT_CHUNK_SIZE = "200:600"
DEFAULT_OVERLAP = "0:0.2"
DEFAULT_JACCARD = "0.6:0.95"
DEFAULT_PREFIX_POLICY = "A,B"
RATIO_DECIMALS = 2
"""Overlap ratios and Jaccard thresholds are searched in steps of 0.01: a locked config then
reads `0.12`, not `0.1237016`, and configs that differ below that would chunk alike anyway."""
FILE_KEYS = ("chunk_size", "overlap_ratio", "jaccard_threshold", "prefix_policy")


@dataclass(frozen=True)
class SearchSpace:
    """Inclusive ranges (a range of one value pins the parameter) and the prefix policies."""

    chunk_size: tuple[int, int]
    overlap_ratio: tuple[float, float]
    jaccard_threshold: tuple[float, float]
    prefix_policies: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"chunk_size": list(self.chunk_size), "overlap_ratio": list(self.overlap_ratio),
                "jaccard_threshold": list(self.jaccard_threshold),
                "prefix_policy": list(self.prefix_policies)}


def max_chunk_size(base: LockedConfig, special_tokens: int,
                   passage_prefix_tokens: int | None = None) -> int:
    """The largest chunk_size a lock of `base`'s embedder and tokenizer accepts (0: none):
    asked of `config.guardrail_violations` itself, with the passage prefix counted as the lock
    counts it, so the space can never drift from the lock's rule."""

    def fits(size: int) -> bool:
        config = replace(base, chunk_size=size)
        return not any(field == "chunk_size" for field, _, _ in guardrail_violations(
            config, special_tokens, passage_prefix_tokens))

    low, high = 0, MAX_CHUNK_SIZE  # fits(low) or low == 0; the rule is monotone in the size
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def parse_space(
    base: LockedConfig, *, special_tokens: int, passage_prefix_tokens: int | None = None,
    chunk_size: str | None = None,
    overlap: str | None = None, jaccard: str | None = None, prefix_policy: str | None = None,
    space_file: Path | None = None,
) -> tuple[SearchSpace, list[str]]:
    """The space from the options (a given option wins over `space_file`, which wins over the
    defaults), checked and cut to the guardrails; and notes on what was cut.
    `passage_prefix_tokens`: the pinned embedder's passage prefix counted by the tokenizer
    (`tokenizer.passage_prefix_tokens`), as `registry lock` counts it."""
    from_file = _read_space_file(space_file) if space_file is not None else {}
    notes: list[str] = []
    sizes = _int_range(chunk_size or from_file.get("chunk_size") or DEFAULT_CHUNK_SIZE,
                       "--chunk-size")
    ceiling = max_chunk_size(base, special_tokens, passage_prefix_tokens)
    passage = (f"{passage_prefix_tokens} tokens of the passage prefix "
               f"{base.embedder.passage_prefix!r}"
               if base.embedder is not None and passage_prefix_tokens else "")
    minus, plus = (f" - {passage}", f" and {passage}") if passage else ("", "")
    if not 1 <= sizes[0] <= sizes[1] <= MAX_CHUNK_SIZE or sizes[0] > ceiling:
        raise ConfigInvalid(
            f"--chunk-size {sizes[0]}:{sizes[1]} is outside the guardrail 1..{ceiling} (token "
            f"budget {base.token_budget} of {base.embedder_name} - {PREFIX_BUDGET_TOKENS} prefix "
            f"tokens - {special_tokens} special tokens{minus})",
            fix=f"search sizes up to {ceiling}")
    if sizes[1] > ceiling:
        notes.append(f"chunk_size range cut to {sizes[0]}:{ceiling}: larger chunks exceed the "
                     f"token budget {base.token_budget} with the {PREFIX_BUDGET_TOKENS}-token "
                     f"prefix, {special_tokens} special tokens{plus}")
        sizes = (sizes[0], ceiling)
    overlaps = _float_range(overlap or from_file.get("overlap_ratio") or DEFAULT_OVERLAP,
                            "--overlap", 0.0, MAX_OVERLAP_RATIO)
    thresholds = _float_range(jaccard or from_file.get("jaccard_threshold") or DEFAULT_JACCARD,
                              "--jaccard", MIN_JACCARD, 1.0)
    policies = _policies(prefix_policy or from_file.get("prefix_policy")
                         or DEFAULT_PREFIX_POLICY)
    return SearchSpace(sizes, overlaps, thresholds, policies), notes


def _read_space_file(path: Path) -> dict[str, str]:
    """A YAML or JSON mapping of the four keys to `[low, high]`, a single value, or (prefix
    policies) a list; returned in the command-line syntax."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read the space file {path}: {err.strerror}",
                         fix="pass --space with a readable YAML or JSON file") from None
    doc = parse_yaml(raw, str(path))
    found: dict[str, str] = {}
    for key, value in doc.data.items():
        if key not in FILE_KEYS:
            raise ConfigInvalid(f"unknown key {key!r} in the search space",
                                where=f"{path}:{doc.line_of(key)}",
                                fix=f"use {', '.join(FILE_KEYS)}")
        values = value if isinstance(value, list) else [value]
        if not values or any(isinstance(v, bool | dict | list) or v is None for v in values):
            raise ConfigInvalid(f"{key} must be a value or a list of values",
                                where=f"{path}:{doc.line_of(key)}",
                                fix=f"write e.g. {key}: [low, high]")
        separator = "," if key == "prefix_policy" else ":"
        found[key] = separator.join(str(v) for v in values)
    return found


def _bounds(text: str, option: str) -> list[str]:
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) not in (1, 2) or not all(parts):
        raise UsageError(f"{option} {text!r} is not LOW:HIGH or one value",
                         fix=f"write e.g. {option} 200:600")
    return parts if len(parts) == 2 else parts * 2


def _int_range(text: str, option: str) -> tuple[int, int]:
    try:
        low, high = (int(p) for p in _bounds(text, option))
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a range of whole numbers",
                         fix=f"write e.g. {option} 200:600") from None
    if low > high:
        raise UsageError(f"{option} {text!r} starts above its end", fix="write LOW:HIGH")
    return low, high


def _float_range(text: str, option: str, lowest: float, highest: float) -> tuple[float, float]:
    """A range of finite numbers: NaN passes every comparison below, and inf is no ratio."""
    try:
        low, high = (round(float(p), RATIO_DECIMALS) for p in _bounds(text, option))
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a range of numbers",
                         fix=f"write e.g. {option} {lowest:g}:{highest:g}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UsageError(f"{option} {text!r} is not a range of finite numbers",
                         fix=f"write e.g. {option} {lowest:g}:{highest:g}")
    if low > high:
        raise UsageError(f"{option} {text!r} starts above its end", fix="write LOW:HIGH")
    if low < lowest or high > highest:
        raise ConfigInvalid(f"{option} {low:g}:{high:g} is outside the guardrail "
                            f"{lowest:g}..{highest:g}",
                            fix=f"search within {lowest:g}:{highest:g}")
    return low, high


def _policies(text: str) -> tuple[str, ...]:
    policies = tuple(dict.fromkeys(p.strip().upper() for p in str(text).split(",") if p.strip()))
    if not policies or any(p not in ("A", "B") for p in policies):
        raise ConfigInvalid(f"--prefix-policy {text!r} must name A, B or both (A,B)",
                            fix="A puts the prefix in embedding_text only, B in both texts")
    return policies

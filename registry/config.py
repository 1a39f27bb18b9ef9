"""The config model: locked chunking configs and production.yaml, as YAML with line numbers.

YAML is read with a strict YAML 1.2 core reading (no timestamps, no `yes`/`no` booleans, no
sexagesimal or hex ints), duplicate keys, anchors/aliases and non-finite numbers refused, so a
locked file means exactly one thing and every problem can name its line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from registry.embedding.spec import FORMAT_VERSION, EmbedderSpec
from registry.errors import ConfigInvalid, Problem, invalid
from registry.notify.settings import NotificationSettings
from registry.repository.config_schema import Kind, schema_problems

SCHEMA_VERSION = 1
"""The locked-config format of a BM25-only config (no `embedder`)."""
EMBEDDER_SCHEMA_VERSION = FORMAT_VERSION
"""The format whose configs pin an embedder (`embedder:`); both formats stay valid."""
MAX_VECTOR_DIMENSION = 2000
"""The largest `vector` pgvector indexes with HNSW: a config whose embedder gives more could
never get the index its table is created with."""
MAX_CHUNK_SIZE = 1000
MAX_OVERLAP_RATIO = 0.5
MIN_JACCARD = 0.5
TOKEN_BUDGET = 1024
PREFIX_BUDGET_TOKENS = 32
"""Tokens every chunk must leave free for the contextual prefix (guardrail, not a cap)."""
DEFAULT_SPECIAL_TOKENS = 2
"""[CLS] and [SEP]: the special tokens a BERT-style embedder adds, when the tokenizer is absent."""
MAX_CONFIG_BYTES = 64 * 1024
DEFAULT_BASE_NAME = "document_chunks"
DEFAULT_SCHEMA = "public"
DEFAULT_TAG_PREFIX = "chunk-config/"
PREFIX_MARKER = "Document: "
"""Every contextual prefix starts with this; under policy A no bm25_text may (health checks it)."""
CONFIG_DIR = "configs"
PRODUCTION_FILE = "production.yaml"
VERSION_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9]{6}-v[1-9][0-9]{0,5}")
PRODUCTION_PATH = f"{CONFIG_DIR}/{PRODUCTION_FILE}"
ENVIRONMENTS_DIR = f"{CONFIG_DIR}/environments"
"""Where environments other than production are declared, one file each: `<name>.yaml`."""
PRODUCTION_ENVIRONMENT = "production"
"""The environment configs/production.yaml declares (the only one a registry may have)."""
ENVIRONMENT_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,20}")


def environment_path(name: str) -> str:
    """Where environment `name` is declared."""
    if name == PRODUCTION_ENVIRONMENT:
        return PRODUCTION_PATH
    return f"{ENVIRONMENTS_DIR}/{name}.yaml"


def environment_flag(name: str) -> str:
    """` --environment NAME` for a command a message suggests (nothing for production, the
    default), so the suggested command acts on the environment the user is acting on."""
    return "" if name == PRODUCTION_ENVIRONMENT else f" --environment {name}"


def config_path(chunk_version: str) -> str:
    """Where the locked config of `chunk_version` lives in the registry repository."""
    return f"{CONFIG_DIR}/{chunk_version}.yaml"


def is_version(text: str) -> bool:
    return VERSION_RE.fullmatch(text) is not None


CHUNKING_FIELDS = (
    "chunk_size",
    "overlap_ratio",
    "jaccard_threshold",
    "prefix_policy",
    "embedder_name",
    "tokenizer_hash",
)
FIELD_ORDER = (
    "schema_version",
    "chunk_version",
    "chunk_size",
    "overlap_ratio",
    "jaccard_threshold",
    "prefix_policy",
    "embedder_name",
    "embedder_max_tokens",
    "embedder",
    "tokenizer_name",
    "tokenizer_hash",
    "created_at",
    "created_by",
    "description",
    "baseline_metrics",
)

# ---------------------------------------------------------------------------------------------
# YAML with line numbers

Path_ = tuple[str | int, ...]

_INT_RE = re.compile(r"^[-+]?[0-9]+$")
_FLOAT_RE = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_NONFINITE_RE = re.compile(r"^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$")
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NULLS = {"", "~", "null", "Null", "NULL"}
_STR_TAG = "tag:yaml.org,2002:str"
_PLAIN = "?"
_COLLECTION_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


class _ComposeOnly(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """C parser when available; plain scalars keep a `?` tag so `_scalar` resolves them."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return _PLAIN
        return str(super().resolve(kind, value, implicit))


@dataclass(frozen=True)
class YamlDoc:
    """A parsed YAML mapping and the 1-based line of every key, for `path:line` messages."""

    path: str
    data: dict[str, Any]
    lines: dict[Path_, int]
    raw: bytes = field(repr=False)

    def line_of(self, *keys: str | int) -> int:
        """The line of the deepest key of `keys` that exists (1 when none does)."""
        path: Path_ = tuple(keys)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 1

    def problem(self, keys: Path_, message: str, fix: str | None = None) -> Problem:
        return Problem(self.path, self.line_of(*keys), message, fix)


def _yaml_problem(where: str, line: int, message: str, fix: str | None = None) -> ConfigInvalid:
    return invalid([Problem(where, line, message, fix)])


def _scalar(node: yaml.ScalarNode, where: str) -> Any:
    line = node.start_mark.line + 1
    value: str = node.value
    if node.tag == _STR_TAG:
        return value
    if node.tag != _PLAIN:
        raise _yaml_problem(where, line, f"YAML tag {node.tag} is not allowed", "use plain values")
    if value in _NULLS:
        return None
    if value in _BOOLS:
        return _BOOLS[value]
    if _INT_RE.match(value):
        if len(value) > 30:
            raise _yaml_problem(where, line, f"number {value[:20]}... is too large", "use a number")
        return int(value)
    if _NONFINITE_RE.match(value):
        raise _yaml_problem(where, line, f"{value} is not a finite number", "use a finite number")
    if _FLOAT_RE.match(value):
        number = float(value)
        if not math.isfinite(number):
            raise _yaml_problem(where, line, f"{value} overflows a float", "use a smaller number")
        return number
    return value


def _build(
    node: yaml.Node, path: Path_, lines: dict[Path_, int], seen: set[int], where: str
) -> Any:
    if id(node) in seen:
        raise _yaml_problem(
            where, node.start_mark.line + 1, "YAML anchors and aliases are not allowed",
            "write every value out in full",
        )
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node, where)
    if node.tag not in _COLLECTION_TAGS:
        raise _yaml_problem(where, node.start_mark.line + 1, f"YAML tag {node.tag} is not allowed",
                            "use plain values")
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            items.append(_build(item, (*path, index), lines, seen, where))
        return items
    if isinstance(node, yaml.MappingNode):
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                raise _yaml_problem(where, line, "only plain string keys are allowed", "remove it")
            key = key_node.value
            if key in mapping:
                raise _yaml_problem(
                    where, line, f"duplicate key {key!r}", "keep exactly one occurrence of each key"
                )
            lines[(*path, key)] = line
            mapping[key] = _build(value_node, (*path, key), lines, seen, where)
        return mapping
    raise _yaml_problem(where, node.start_mark.line + 1, "unsupported YAML node", None)


def parse_yaml(raw: bytes, where: str) -> YamlDoc:
    """Parse one YAML mapping, refusing anything that could mean two things or explode."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise _yaml_problem(
            where, 1, f"file is {len(raw)} bytes, above the {MAX_CONFIG_BYTES}-byte limit",
            "a config is a few hundred bytes; check that this is the right file",
        )
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise _yaml_problem(where, line, "file contains a NUL byte", "save it as UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise _yaml_problem(where, line, "file is not valid UTF-8", "save it as UTF-8") from None
    text = text.removeprefix("\ufeff")
    try:
        root = yaml.compose(text, Loader=_ComposeOnly)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        reason = (err.problem or err.context or "malformed YAML").strip()
        raise _yaml_problem(
            where, line, f"malformed YAML: {reason}", "fix the YAML syntax"
        ) from None
    except yaml.YAMLError as err:
        raise _yaml_problem(where, 1, f"malformed YAML: {err}", "fix the YAML syntax") from None
    if not isinstance(root, yaml.MappingNode):
        line = root.start_mark.line + 1 if root is not None else 1
        raise _yaml_problem(where, line, "expected a mapping of keys to values", "see the schema")
    lines: dict[Path_, int] = {}
    data = _build(root, (), lines, set(), where)
    return YamlDoc(path=where, data=data, lines=lines, raw=raw)


# ---------------------------------------------------------------------------------------------
# Locked configs


def ingest_run_id_for(chunk_version: str, config_hash: str) -> str:
    """`{chunk_version}-{config_hash[:8]}`: the one ingest run a locked config's table holds."""
    return f"{chunk_version}-{config_hash[:8]}"


def table_name_for(chunk_version: str, base_name: str = DEFAULT_BASE_NAME) -> str:
    """`document_chunks_2025_09_07_143022_v1`: the shadow table of one locked config."""
    return f"{base_name}_{chunk_version.replace('-', '_')}"


def overlap_tokens(chunk_size: int, overlap_ratio: float) -> int:
    """Tokens shared by consecutive windows: round half up, so 450 x 0.10 -> 45."""
    return math.floor(chunk_size * overlap_ratio + 0.5 + 1e-9)


@dataclass(frozen=True)
class LockedConfig:
    """One immutable chunking configuration (the seed's LockedConfig, field names kept).

    Whether it is production, and which table holds it, depend on the repo state and the
    production settings, so they are derived (`RegistryState.is_production`,
    `ProductionConfig.table_name`).
    """

    chunk_version: str
    chunk_size: int
    overlap_ratio: float
    jaccard_threshold: float
    prefix_policy: str
    embedder_name: str
    embedder_max_tokens: int
    tokenizer_name: str
    tokenizer_hash: str
    created_at: str
    created_by: str
    baseline_metrics: Mapping[str, float] = field(default_factory=dict)
    description: str | None = None
    schema_version: int = SCHEMA_VERSION
    embedder: EmbedderSpec | None = None
    """The pinned embedder (format 2); None: a BM25-only config (format 1), no vectors."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> LockedConfig:
        """Build from an already schema-valid mapping (see `load_locked`)."""
        known = {name: data[name] for name in FIELD_ORDER if name in data}
        known["overlap_ratio"] = float(known["overlap_ratio"])
        known["jaccard_threshold"] = float(known["jaccard_threshold"])
        known["baseline_metrics"] = dict(known.get("baseline_metrics") or {})
        if known.get("embedder") is not None:
            known["embedder"] = EmbedderSpec.from_dict(known["embedder"])
        return cls(**known)

    @property
    def overlap_tokens(self) -> int:
        return overlap_tokens(self.chunk_size, self.overlap_ratio)

    @property
    def chunking_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CHUNKING_FIELDS}

    @property
    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the fields that change what the chunker produces,
        and for a format 2 config the whole embedder pin (what the vectors are)."""
        fields_hashed = self.chunking_fields
        if self.embedder is not None:
            fields_hashed = {**fields_hashed, "embedder": self.embedder.to_dict()}
        canonical = json.dumps(fields_hashed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def ingest_run_id(self) -> str:
        return ingest_run_id_for(self.chunk_version, self.config_hash)

    @property
    def token_budget(self) -> int:
        """Most tokens an embedding_text may have: the embedder's limit within the hard 1024."""
        return min(self.embedder_max_tokens, TOKEN_BUDGET)

    @property
    def created_datetime(self) -> datetime:
        # The schema fixes the shape (…T14:30:22Z); fromisoformat checks the values, in C.
        return datetime.fromisoformat(self.created_at).astimezone(UTC)

    def label(self) -> str:
        """The short form teams use: `450/0.10/J=0.8/prefix-A`."""
        return (
            f"{self.chunk_size}/{self.overlap_ratio:.2f}/J={self.jaccard_threshold:g}/"
            f"prefix-{self.prefix_policy}"
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in FIELD_ORDER:
            value = getattr(self, name)
            if name in ("description", "embedder") and value is None:
                continue
            if name == "embedder":
                value = value.to_dict()
            data[name] = dict(value) if name == "baseline_metrics" else value
        return data

    def dump(self) -> str:
        """The canonical YAML of this config: what `registry lock` writes, byte for byte."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)


_WORD_OR_MARK = re.compile(r"\w+|[^\w\s]")


def least_prefix_tokens(prefix: str) -> int:
    """A lower bound on the tokens of a passage prefix without its tokenizer: a BERT-style
    pre-tokenizer splits at least at words and punctuation (a lock counts exactly)."""
    return len(_WORD_OR_MARK.findall(prefix))


def guardrail_violations(
    config: LockedConfig, special_tokens: int = DEFAULT_SPECIAL_TOKENS,
    passage_prefix_tokens: int | None = None,
) -> list[tuple[str, str, str]]:
    """(field, what is wrong, how to fix) for every guardrail beyond the schema's bounds; for
    a config that pins an embedder, its compatibility too (`embedder_violations`).
    `passage_prefix_tokens`: the embedder's passage prefix counted by its tokenizer (None:
    the offline lower bound)."""
    found = []
    spec = config.embedder
    prefix_tokens = 0
    if spec is not None:
        prefix_tokens = (least_prefix_tokens(spec.passage_prefix)
                         if passage_prefix_tokens is None else passage_prefix_tokens)
    needed = config.chunk_size + PREFIX_BUDGET_TOKENS + special_tokens + prefix_tokens
    if needed > config.token_budget:
        room = config.token_budget - PREFIX_BUDGET_TOKENS - special_tokens - prefix_tokens
        passage = (f" + passage prefix {spec.passage_prefix!r} ({prefix_tokens} tokens)"
                   if spec is not None and prefix_tokens else "")
        found.append((
            "chunk_size",
            f"chunk_size {config.chunk_size} + prefix budget {PREFIX_BUDGET_TOKENS} + "
            f"{special_tokens} special tokens{passage} = {needed} exceeds the token budget "
            f"{config.token_budget} (embedder_max_tokens {config.embedder_max_tokens}, hard cap "
            f"{TOKEN_BUDGET})",
            f"lock a new version with --chunk-size <= {max(room, 0)} or an embedder with more "
            "tokens",
        ))
    found.extend(embedder_violations(config))
    if config.chunk_size > 1 and config.overlap_tokens >= config.chunk_size:
        found.append((
            "overlap_ratio",
            f"overlap of {config.overlap_tokens} tokens leaves no stride in "
            f"{config.chunk_size}-token chunks",
            "lock a new version with a smaller --overlap-ratio",
        ))
    try:
        config.created_datetime  # noqa: B018 - parsing is the check
    except ValueError:
        found.append(("created_at", f"created_at {config.created_at!r} is not a real UTC time",
                      "use a real time like 2025-09-07T14:30:22Z"))
    return found


def embedder_violations(config: LockedConfig) -> list[tuple[str, str, str]]:
    """What makes a pinned embedder incompatible with its config, checked offline: the flat
    fields repeat the pin, its own tokenizer is the locked one (where it declares one: an
    onnx embedder always does), and pgvector can index its vectors with HNSW."""
    spec = config.embedder
    if spec is None:
        return []
    found = []
    relock = "lock a new version; `registry lock` fills these from the pin"
    if config.embedder_name != spec.name:
        found.append(("embedder_name", f"embedder_name {config.embedder_name} is not "
                      f"embedder.name {spec.name}", relock))
    if config.embedder_max_tokens != spec.max_tokens:
        found.append(("embedder_max_tokens", f"embedder_max_tokens {config.embedder_max_tokens} "
                      f"is not embedder.max_tokens {spec.max_tokens}", relock))
    if spec.tokenizer_hash is not None and spec.tokenizer_hash != config.tokenizer_hash:
        found.append(("tokenizer_hash", f"tokenizer_hash {config.tokenizer_hash} is not the "
                      f"embedder's tokenizer ({spec.tokenizer_hash}): chunks would be counted "
                      "with another tokenizer than the one that embeds them",
                      "lock a new version with the embedder's tokenizer.json as --tokenizer-file"))
    if spec.dimension > MAX_VECTOR_DIMENSION:
        found.append(("embedder", f"embedder dimension {spec.dimension} is above "
                      f"{MAX_VECTOR_DIMENSION}, the most pgvector indexes with HNSW",
                      "pin an embedder (or an API `dimensions` setting) of at most "
                      f"{MAX_VECTOR_DIMENSION} dimensions"))
    return found


def load_locked(raw: bytes, where: str) -> tuple[LockedConfig, YamlDoc]:
    """Parse and schema-check one locked config file; raise ConfigInvalid on the first problem."""
    doc = schema_checked(raw, where, "locked")
    return locked_from_doc(doc), doc


def locked_from_doc(doc: YamlDoc) -> LockedConfig:
    """The config of a schema-valid document; what only the embedder spec's own rules refuse
    (an onnx pin without its model hash, say) is reported at its line like a schema problem."""
    try:
        return LockedConfig.from_mapping(doc.data)
    except ConfigInvalid as err:
        raise invalid([embedder_problem(doc, err)]) from None


def embedder_problem(doc: YamlDoc, err: ConfigInvalid) -> Problem:
    """An EmbedderSpec refusal (`where` is the field path, e.g. `embedder.model_hash`) as a
    problem at that field's line."""
    return doc.problem(tuple((err.where or "embedder").split(".")), err.message, err.fix)


def schema_checked(raw: bytes, where: str, kind: Kind) -> YamlDoc:
    """`raw` parsed and checked against the `kind` schema; ConfigInvalid on any problem."""
    doc = parse_yaml(raw, where)
    problems = schema_problems(doc, kind)
    if problems:
        raise invalid(problems)
    return doc


# ---------------------------------------------------------------------------------------------
# production.yaml


def parse_duration(text: str) -> timedelta:
    """`48h` -> 48 hours; units s, m, h, d (the schema guarantees the shape)."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    return timedelta(**{units[text[-1]]: int(text[:-1])})


def duration_text(delta: timedelta) -> str:
    """`48h`, `90m`, `45s`: a duration as production.yaml writes it (parse_duration's inverse
    for whole hours, minutes and seconds)."""
    seconds = int(delta.total_seconds())
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Guardrails:
    """When the promotion watch ends an experiment: the candidate's success rate below the
    control's by more than `success_rate_max_drop` (once both arms have `min_outcomes`), or
    its latest health report below an oracle/filter hit rate floor."""

    success_rate_max_drop: float | None = None
    min_outcomes: int = 200
    oracle_hit_rate_min: float | None = None
    filter_hit_rate_min: float | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Guardrails:
        def rate(name: str) -> float | None:
            return float(data[name]) if data.get(name) is not None else None

        return cls(rate("success_rate_max_drop"), int(data.get("min_outcomes", 200)),
                   rate("oracle_hit_rate_min"), rate("filter_hit_rate_min"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("success_rate_max_drop", "min_outcomes", "oracle_hit_rate_min",
                     "filter_hit_rate_min"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True)
class ExperimentConfig:
    """`experiment:` in an environment's config: the candidate locked version gets `share` of
    the request keys (registry.routing) until `ends`."""

    name: str
    candidate: str
    share: float
    salt: str
    ends: datetime
    guardrails: Guardrails = field(default_factory=Guardrails)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        return cls(str(data["name"]), str(data["candidate"]), float(data["share"]),
                   str(data["salt"]), parse_rfc3339(str(data["ends"])),
                   Guardrails.from_mapping(data.get("guardrails") or {}))

    def running(self, now: datetime) -> bool:
        return now < self.ends

    @property
    def run(self) -> str:
        """Which run of the name this is: outcomes and the guardrail stop are kept per run."""
        return experiment_run(self.candidate, self.salt, self.ends)

    def to_dict(self) -> dict[str, Any]:
        """The mapping as production.yaml writes it (and the served state stores it)."""
        out: dict[str, Any] = {"name": self.name, "candidate": self.candidate,
                               "share": self.share, "salt": self.salt,
                               "ends": rfc3339(self.ends)}
        guardrails = self.guardrails.to_dict()
        if guardrails:
            out["guardrails"] = guardrails
        return out


def experiment_run(candidate: str, salt: str, ends: datetime) -> str:
    """`<candidate>:<salt>:<ends>`: an experiment started again under its name (a new
    candidate, salt or end time: `experiment start` always writes a new end) is another run,
    so its report and guardrail stop never see the earlier run's outcomes. Changing the share
    keeps the run."""
    return f"{candidate}:{salt}:{rfc3339(ends)}"


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 moment (the schema fixed its shape), as an aware UTC datetime; ValueError,
    in one line, when it is not a real time (February 30th, or beyond year 1..9999 in UTC)."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"{text!r} is not a real time (or is outside years 1..9999 in UTC)"
                         ) from None


def rfc3339(moment: datetime) -> str:
    """`moment` in UTC with a `Z`, the year in four digits (strftime's %Y drops the zeros of
    year 500, which would not parse back)."""
    return moment.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat() + "Z"


@dataclass(frozen=True)
class Promotion:
    """`promotion:` of an environment: a version reaches it only after the environment
    `source` served it for `soak`, with passing health reports there when `require_healthy`."""

    source: str
    soak: timedelta
    require_healthy: bool = True

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Promotion:
        return cls(source=str(data["from"]), soak=parse_duration(data["soak"]),
                   require_healthy=bool(data.get("require_healthy", True)))


@dataclass(frozen=True)
class ProductionConfig:
    """configs/production.yaml: the production pointer and the rollout policy, with defaults.

    An environment file (configs/environments/<name>.yaml) reads into the same type:
    `production` is then the version that environment serves (its `serves:`), and
    `environment` its name; the whole tool acts on an environment through its settings."""

    production: str | None
    schema: str = DEFAULT_SCHEMA
    base_name: str = DEFAULT_BASE_NAME
    grace_period: timedelta = timedelta(hours=48)
    keep_previous: int = 1
    oracle_hit_rate_max_drop: float = 0.02
    filter_hit_rate_max_drop: float = 0.02
    require_eval: bool = False
    target_oracle_hit_rate: float = 0.45
    target_filter_hit_rate: float = 0.20
    target_snapshot_size: tuple[float, float] = (30.0, 60.0)
    target_dedup_rate: tuple[float, float] = (0.10, 0.35)
    target_retrieval_p95_ms: float = 500.0
    """Health alerts when one query's retrieval (its embedding included) is slower at p95."""
    ce_score_drift: float = 0.25
    """Largest move of a cross-encoder score quantile from the baseline, in baseline spreads."""
    tag_prefix: str = DEFAULT_TAG_PREFIX
    monitoring_window: timedelta = timedelta(hours=48)
    notifications: NotificationSettings | None = None
    registry: str | None = None
    """The registry's name (`registry:` in production.yaml), recorded on everything it creates;
    None: the legacy identity, `schema.base_name`."""
    experiment: ExperimentConfig | None = None
    """The A/B experiment this environment runs (docs/experiments.md), if any."""
    environment: str = PRODUCTION_ENVIRONMENT
    dsn_env: str | None = None
    """The environment variable holding this environment's DSN (never the DSN itself)."""
    promotion: Promotion | None = None

    @property
    def legacy_identity(self) -> str:
        """The identity of a registry without `registry:` (and of what one created before the
        key existed): where its tables live. Never a valid `registry:` name (it has a dot)."""
        return f"{self.schema}.{self.base_name}"

    @property
    def identity(self) -> str:
        """The name recorded on bookkeeping rows and table/view markers this registry writes."""
        return self.registry or self.legacy_identity

    @property
    def identities(self) -> tuple[str, ...]:
        """What this registry owns: its own name, and what was recorded under its legacy
        identity (a registry that adds `registry:` keeps the tables it created before)."""
        return tuple(dict.fromkeys((self.identity, self.legacy_identity)))

    def owns(self, identity: str | None) -> bool:
        """Whether a recorded identity is this registry's (None: a marker written before
        identities, by whoever uses this schema and base name)."""
        return identity is None or identity in self.identities

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ProductionConfig:
        tables = data.get("tables") or {}
        retention = data.get("retention") or {}
        gates = data.get("gates") or {}
        targets = data.get("targets") or {}
        defaults = cls(production=None)
        return cls(
            production=data.get("production"),
            schema=tables.get("schema", defaults.schema),
            base_name=tables.get("base_name", defaults.base_name),
            grace_period=parse_duration(retention["grace_period"])
            if "grace_period" in retention
            else defaults.grace_period,
            keep_previous=retention.get("keep_previous", defaults.keep_previous),
            oracle_hit_rate_max_drop=float(
                gates.get("oracle_hit_rate_max_drop", defaults.oracle_hit_rate_max_drop)
            ),
            filter_hit_rate_max_drop=float(
                gates.get("filter_hit_rate_max_drop", defaults.filter_hit_rate_max_drop)
            ),
            require_eval=bool(gates.get("require_eval", defaults.require_eval)),
            target_oracle_hit_rate=float(
                targets.get("oracle_hit_rate", defaults.target_oracle_hit_rate)
            ),
            target_filter_hit_rate=float(
                targets.get("filter_hit_rate", defaults.target_filter_hit_rate)
            ),
            target_snapshot_size=_range(
                targets.get("snapshot_size"), defaults.target_snapshot_size
            ),
            target_dedup_rate=_range(targets.get("dedup_rate"), defaults.target_dedup_rate),
            target_retrieval_p95_ms=float(
                targets.get("retrieval_p95_ms", defaults.target_retrieval_p95_ms)),
            ce_score_drift=float(targets.get("ce_score_drift", defaults.ce_score_drift)),
            tag_prefix=(data.get("tags") or {}).get("prefix", defaults.tag_prefix),
            monitoring_window=parse_duration(data["monitoring"]["window"])
            if "window" in (data.get("monitoring") or {})
            else defaults.monitoring_window,
            notifications=NotificationSettings.from_mapping(data["notifications"])
            if data.get("notifications") else None,
            registry=data.get("registry"),
            experiment=ExperimentConfig.from_mapping(data["experiment"])
            if data.get("experiment") else None,
            dsn_env=data.get("dsn_env"),
            promotion=Promotion.from_mapping(data["promotion"]) if data.get("promotion") else None,
        )

    @classmethod
    def for_environment(
        cls, name: str, data: Mapping[str, Any], production: ProductionConfig
    ) -> ProductionConfig:
        """An environment file's settings: its `serves:` is the version it serves; its
        identity, unless it names one, is production's name with `-<name>` (a registry without
        `registry:` keeps the legacy identity of the environment's own tables); tags are
        production's (a lock tag names a config, whatever serves it)."""
        settings = cls.from_mapping({**data, "production": data.get("serves")})
        registry = settings.registry or (
            f"{production.registry}-{name}" if production.registry else None)
        return replace(settings, environment=name, registry=registry,
                       tag_prefix=production.tag_prefix)

    def table_name(self, chunk_version: str) -> str:
        return table_name_for(chunk_version, self.base_name)

    def tag_name(self, chunk_version: str) -> str:
        return f"{self.tag_prefix}{chunk_version}"

    def names_relation(self, name: str) -> bool:
        """Whether this registry would name a relation so: its view, its candidate view, or
        `<base_name>_<version>`. A name that merely starts with `<base_name>_` may be another
        base name's (`document_chunks_en_...` next to `document_chunks`)."""
        if name in (self.base_name, self.candidate_view):
            return True
        prefix = f"{self.base_name}_"
        return name.startswith(prefix) and is_version(name[len(prefix):].replace("_", "-"))

    @property
    def candidate_view(self) -> str:
        """`document_chunks_candidate`: the view SQL clients read for an experiment's candidate
        arm (never a table name: those end in a chunk_version, which starts with a digit)."""
        return f"{self.base_name}_candidate"


def _range(value: Any, default: tuple[float, float]) -> tuple[float, float]:
    return (float(value[0]), float(value[1])) if value else default


def load_production(raw: bytes, where: str) -> tuple[ProductionConfig, YamlDoc]:
    doc = schema_checked(raw, where, "production")
    return ProductionConfig.from_mapping(doc.data), doc


def set_production_pointer(raw: bytes, chunk_version: str, key: str = "production") -> bytes:
    """production.yaml with only its `production:` line changed (an environment file: its
    `serves:` line, `key`), comments and layout kept.

    Promotion PRs then show a one-line diff, and `git revert` of one restores the other.
    """
    text = raw.decode("utf-8")
    pattern = re.compile(rf"^{key}:[^\n]*$", re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(f"{key}: {chunk_version}", text, count=1).encode()
    return f"{key}: {chunk_version}\n{text}".encode()


def set_experiment_block(raw: bytes, experiment: ExperimentConfig | None) -> bytes:
    """production.yaml with its top-level `experiment:` block replaced (None: removed), every
    other line kept, so an experiment's pull request shows only the experiment changing."""
    lines = raw.decode("utf-8").splitlines(keepends=True)
    kept: list[str] = []
    inside = False
    for line in lines:
        if line.startswith("experiment:"):
            inside = True
            continue
        if inside and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        inside = False
        kept.append(line)
    text = "".join(kept)
    if text and not text.endswith("\n"):
        text += "\n"
    if experiment is not None:
        block = yaml.safe_dump({"experiment": experiment.to_dict()}, sort_keys=False,
                               default_flow_style=False, width=100)
        # The schema wants `ends` as a string: a bare timestamp would read as one anyway under
        # the strict loader, but quoting says so to a person reading the file.
        text += block.replace(f"ends: {rfc3339(experiment.ends)}",
                              f"ends: '{rfc3339(experiment.ends)}'")
    return text.encode()


# ---------------------------------------------------------------------------------------------
# Environment (the seed's ChunkingConfig)

ENV_VARS = (
    "CHUNK_SIZE",
    "OVERLAP_RATIO",
    "JACCARD_THRESHOLD",
    "PREFIX_POLICY",
    "CHUNK_VERSION",
    "INGEST_RUN_ID",
    "EVAL_DISABLE_CACHE",
)


@dataclass(frozen=True)
class ChunkingConfig:
    """The runtime chunking parameters a pipeline reads from its environment.

    `from_env` starts from a locked config (or the 450/0.10/0.8/A defaults) and applies the
    seed's env vars, each checked against the guardrails, so `eval "$(registry env V)"` gives
    a pipeline exactly the locked values and a stray override is caught, not obeyed silently.
    """

    chunk_size: int = 450
    overlap_ratio: float = 0.10
    jaccard_threshold: float = 0.8
    prefix_policy: str = "A"
    chunk_version: str | None = None
    ingest_run_id: str | None = None
    eval_disable_cache: bool = False

    @classmethod
    def from_locked(cls, config: LockedConfig) -> ChunkingConfig:
        return cls(
            chunk_size=config.chunk_size,
            overlap_ratio=config.overlap_ratio,
            jaccard_threshold=config.jaccard_threshold,
            prefix_policy=config.prefix_policy,
            chunk_version=config.chunk_version,
            ingest_run_id=config.ingest_run_id,
            eval_disable_cache=True,
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, base: LockedConfig | None = None
    ) -> ChunkingConfig:
        env = os.environ if environ is None else environ
        start = cls.from_locked(base) if base else cls()
        values: dict[str, Any] = {}
        if "CHUNK_SIZE" in env:
            values["chunk_size"] = _env_number(env, "CHUNK_SIZE", int, 1, MAX_CHUNK_SIZE)
        if "OVERLAP_RATIO" in env:
            values["overlap_ratio"] = _env_number(env, "OVERLAP_RATIO", float, 0, MAX_OVERLAP_RATIO)
        if "JACCARD_THRESHOLD" in env:
            values["jaccard_threshold"] = _env_number(
                env, "JACCARD_THRESHOLD", float, MIN_JACCARD, 1
            )
        if "PREFIX_POLICY" in env:
            policy = env["PREFIX_POLICY"].strip().upper()
            if policy not in ("A", "B"):
                raise ConfigInvalid(
                    f"PREFIX_POLICY={env['PREFIX_POLICY']!r} is not A or B",
                    where="environment", fix="set PREFIX_POLICY=A or PREFIX_POLICY=B",
                )
            values["prefix_policy"] = policy
        if "CHUNK_VERSION" in env:
            version = env["CHUNK_VERSION"].strip()
            if not VERSION_RE.fullmatch(version):
                raise ConfigInvalid(
                    f"CHUNK_VERSION={version!r} is not a chunk version",
                    where="environment", fix="use the form 2025-09-07-143022-v1",
                )
            values["chunk_version"] = version
        if "INGEST_RUN_ID" in env:
            values["ingest_run_id"] = env["INGEST_RUN_ID"].strip()
        if "EVAL_DISABLE_CACHE" in env:
            values["eval_disable_cache"] = env["EVAL_DISABLE_CACHE"].strip().lower() in (
                "1", "true", "yes", "on",
            )
        return cls(**{**start.__dict__, **values})

    def mismatches(self, config: LockedConfig) -> list[str]:
        """The chunking parameters in which this environment disagrees with a locked config."""
        locked = ChunkingConfig.from_locked(config)
        names = ("chunk_size", "overlap_ratio", "jaccard_threshold", "prefix_policy",
                 "chunk_version", "ingest_run_id")
        return [
            f"{name.upper()}={getattr(self, name)} (locked: {getattr(locked, name)})"
            for name in names
            if getattr(self, name) is not None and getattr(self, name) != getattr(locked, name)
        ]


def _env_number(
    env: Mapping[str, str], name: str, kind: type[int] | type[float], low: float, high: float
) -> Any:
    text = env[name].strip()
    try:
        value = kind(text)
    except ValueError:
        raise ConfigInvalid(
            f"{name}={text!r} is not a {kind.__name__}", where="environment",
            fix=f"set {name} to a number between {low:g} and {high:g}",
        ) from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigInvalid(
            f"{name}={text} is outside the guardrail [{low:g}, {high:g}]", where="environment",
            fix=f"set {name} between {low:g} and {high:g}",
        )
    return value


def utc_now() -> datetime:
    return datetime.now(UTC)

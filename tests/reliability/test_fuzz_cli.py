"""A seeded fuzz of command inputs through the real entry point `registry.cli.app.main`: refs,
cases files, corpora, DSNs and environment variables drawn from hostile alphabets. Whatever
the input, the answer is an exit code other than 3 ("a bug: report it") and, on failure, one
line. Bounded in time; prints the inputs tried and the exit codes seen."""

from __future__ import annotations

import collections
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_cli, training_text
from tests.test_ingest import Shadow, shadow  # noqa: F401  (the fixture)

pytestmark = pytest.mark.reliability
BUDGET_S = 90.0
SEED = 15
NASTY = ["\u0000", "\ud800", "\udfff", "\u202e", "\n", "\r", "\t", "'", '"', "\\", "%", "{",
         "}", "$(id)", "`", ";", "--", "..", "/", "~", "@", ":", "=", " ", "é", "\U0001f600",
         "^{}", "HEAD~99", "refs/tags/", "-", "--help", "*", "?", "[", "\x7f", "\ufeff"]


def word(rng: random.Random, length: int = 12) -> str:
    return "".join(rng.choice(NASTY) if rng.random() < 0.4 else rng.choice("abcxyz019-_")
                   for _ in range(rng.randrange(length)))


def env_safe(value: str) -> str:
    """What an environment can hold: no NUL, no lone surrogate (the OS passes bytes)."""
    return value.replace("\u0000", "").encode("utf-8", "ignore").decode()


def json_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 2 or roll < 0.4:
        return rng.choice([word(rng), rng.randrange(-5, 10**6), None, True, 1.5, "", "x" * 500])
    if roll < 0.7:
        return {rng.choice(["query_id", "query", "gt_answer", "doc_id", "text", "title", "kind",
                            word(rng)]): json_value(rng, depth + 1) for _ in range(rng.randrange(5))}
    return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def records_file(rng: random.Random, path: Path, fields: tuple[str, ...]) -> Path:
    lines = []
    for number in range(rng.randrange(1, 6)):
        if rng.random() < 0.5:
            record = {f: (word(rng) if rng.random() < 0.5 else " ".join(training_text()[
                number].split()[:rng.randrange(1, 60)])) for f in fields}
            lines.append(json.dumps(record, ensure_ascii=rng.random() < 0.5))
        else:
            lines.append(json.dumps(json_value(rng)) if rng.random() < 0.8 else word(rng, 40))
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    if rng.random() < 0.1:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    path.write_bytes(data)
    return path


def dsn(rng: random.Random, good: str) -> str:
    return rng.choice([
        f"postgresql://u:{word(rng)}@127.0.0.1:1/db", f"host={word(rng)} password={word(rng)}",
        word(rng, 30), f"{good} options={word(rng)}", f"postgresql://{word(rng)}",
        good.replace("dbname=", "dbname=nope_"), f"PASSWORD={word(rng)} host=/nonexistent",
    ])


def test_no_input_makes_an_unexpected_error(shadow: Shadow, tmp_path: Path,  # noqa: F811
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(SEED)
    repo, version, good = shadow.repo.path, shadow.version, shadow.dsn
    seed = tmp_path / "seed.jsonl"
    seed.write_text(json.dumps({"doc_id": "a", "text": training_text()[3]}) + "\n")
    shadow.ingest(seed)
    makers = {
        "validate --ref": lambda: ["validate", "--repo", repo, "--ref", word(rng)],
        "history --ref": lambda: ["history", "--repo", repo, "--ref", word(rng)],
        "show": lambda: ["show", word(rng), "--repo", repo],
        "list --ref": lambda: ["list", "--repo", repo, "--ref", word(rng)],
        "plan --ref": lambda: ["plan", "--repo", repo, "--no-fetch", "--ref", word(rng),
                               "--dsn", good],
        "promote": lambda: ["promote", word(rng), "--repo", repo],
        "retire": lambda: ["retire", word(rng), "--repo", repo],
        "runbook": lambda: ["runbook", word(rng), "--repo", repo],
        "eval --cases": lambda: ["eval", version, "--repo", repo, "--dsn", good, "--cases",
                                 records_file(rng, tmp_path / "cases.jsonl",
                                              ("query_id", "query", "gt_answer"))],
        "health --cases": lambda: ["health", "--version", version, "--repo", repo, "--dsn",
                                   good, "--no-record", "--cases",
                                   records_file(rng, tmp_path / "hcases.jsonl",
                                                ("query_id", "query", "gt_answer"))],
        "ingest --source": lambda: ["ingest", version, "--repo", repo, "--dsn", good,
                                    "--workers", "1", "--tokenizer-file",
                                    shadow.repo.tokenizer_file, "--source",
                                    records_file(rng, tmp_path / "corpus.jsonl",
                                                 ("doc_id", "text", "title"))],
        "status --dsn": lambda: ["status", "--repo", repo, "--no-fetch", "--dsn", dsn(rng, good)],
        "eval --dsn": lambda: ["eval", version, "--repo", repo, "--dsn", dsn(rng, good),
                               "--cases", records_file(rng, tmp_path / "c2.jsonl",
                                                       ("query_id", "query", "gt_answer"))],
        "env REGISTRY_DSN": lambda: ["status", "--repo", repo, "--no-fetch"],
        "env REGISTRY_REPO/HOME": lambda: ["db-url"],
    }
    tried: collections.Counter[str] = collections.Counter()
    codes: collections.Counter[int] = collections.Counter()
    failures = []
    deadline = time.monotonic() + BUDGET_S
    names = sorted(makers)
    while time.monotonic() < deadline and sum(tried.values()) < 400:
        name = names[sum(tried.values()) % len(names)]
        with monkeypatch.context() as env:
            if name == "env REGISTRY_DSN":
                env.setenv("REGISTRY_DSN", env_safe(dsn(rng, good)))
            if name == "env REGISTRY_REPO/HOME":
                env.setenv("REGISTRY_DSN", good)
                env.setenv("REGISTRY_REPO", env_safe(word(rng)))
            args = makers[name]()
            try:
                result = run_cli(*args)
            except ValueError as err:  # os.environ or argv refusing a NUL is not the CLI's
                pytest.fail(f"{name}: {err}")
        tried[name] += 1
        codes[result.code] += 1
        if result.code == 3 or (result.code and "Traceback" in result.stderr):
            failures.append((name, [str(a) for a in args], result.stderr.strip()[:300]))
    print(f"\nfuzz: {sum(tried.values())} inputs in {len(tried)} kinds: {dict(tried)}")
    print(f"exit codes seen: {dict(sorted(codes.items()))}")
    assert sum(tried.values()) >= len(names), "the budget ran out before every kind was tried"
    for failure in failures:
        print("EXIT3", failure)
    assert not failures, failures[:5]
    assert os.environ.get("REGISTRY_REPO") is None

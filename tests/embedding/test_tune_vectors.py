"""`registry tune` on a base config that pins an embedder (issue 18, item 1): every trial table
gets the embedding column and its HNSW index, its passages embedded through the content-addressed
cache (a later trial computes only the texts no earlier trial embedded), and the trial is judged
by hybrid retrieval, as the gate judges tables with vectors. `--lock-best` keeps the pin.

A tiny corpus and two trials: the int8 MiniLM embeds a few short chunks a second on the shared
cores."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from registry.commands.tune import tune
from registry.config import load_locked
from registry.embedding.onnx import installed_model
from registry.embedding.spec import EmbedderSpec
from registry.tune.scratch import SCRATCH_PREFIX
from tests.database import Database
from tests.embedding.conftest import needs_minilm
from tests.embedding.test_ingest_vectors import DOCUMENTS, lock, minilm_spec
from tests.helpers import RegistryRepo, run_cli
from tests.test_vector_tables import needs_pgvector

pytestmark = needs_minilm
__all__ = ["minilm_spec"]  # the fixture, imported for this module's tests

CASES = [
    {"query_id": "q1", "query": "What do cats eat?", "gt_answer": "fish and chicken"},
    {"query_id": "q2", "query": "What does a rollback revert?",
     "gt_answer": "reverts the promotion commit"},
]
LONG = ("# Guide\n\n" + " ".join(f"Step {n} moves the chunk registry forward by one careful "
                                 "change." for n in range(12)) + "\n")


def corpus(root: Path) -> tuple[Path, Path]:
    """(source directory, cases file): four short documents, two cases."""
    source = root / "docs"
    source.mkdir()
    for name, text in {**DOCUMENTS, "guide.md": LONG}.items():
        (source / name).write_text(text)
    cases = root / "cases.jsonl"
    cases.write_text("".join(json.dumps(case) + "\n" for case in CASES))
    return source, cases


@pytest.fixture
def repo(tmp_path: Path) -> RegistryRepo:
    return RegistryRepo.create(tmp_path, installed_model("all-MiniLM-L6-v2-int8")[1])


@pytest.mark.slow
def test_trials_of_an_embedder_pin_carry_vectors_reuse_them_and_are_judged_hybrid(
        repo: RegistryRepo, dsn: str, tmp_path: Path, minilm_spec: EmbedderSpec) -> None:
    needs_pgvector(dsn)
    version = lock(repo, minilm_spec)
    source, cases = corpus(tmp_path)
    loaded: dict[int, tuple[int, int, str]] = {}

    def look(number: int) -> None:
        with psycopg.connect(dsn) as conn:
            schema = conn.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, "
                                  "%s)", (SCRATCH_PREFIX,)).fetchone()
            assert schema is not None
            table = f'"{schema[0]}"."trial_{number}"'
            row = conn.execute(f"SELECT count(*), count(embedding), "
                               f"min(vector_dims(embedding)) FROM {table}").fetchone()
            index = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND "
                                 "indexname = %s", (schema[0], f"trial_{number}_hnsw")).fetchone()
        assert row is not None and index is not None
        loaded[number] = (row[0], row[1], index[0])
        assert row[2] == minilm_spec.dimension

    result = tune(repo.path, source=source, cases=cases, dsn=dsn, base=version, trials=2,
                  tokenizer_file=repo.tokenizer_file,
                  chunk_size="40:100", overlap="0:0", jaccard="0.8:0.8", prefix_policy="A",
                  seed=1, objectives=("oracle_hit_rate", "index_bytes"), lock_best=True,
                  on_trial_loaded=look)

    built = [t for t in result.trials if "build_s" in t.details]
    assert len(built) == 2, [t.to_dict() for t in result.trials]
    for trial in built:
        rows, with_vectors, index = loaded[trial.number]
        assert rows == with_vectors == trial.metrics["rows"] > 0
        assert "USING hnsw" in index and "vector_ip_ops" in index
        assert trial.details["retrieval"] == "hybrid"
        assert trial.details["vectors_computed"] + trial.details["vectors_reused"] == rows
    first, second = built
    assert first.details["vectors_computed"] > 0
    # two chunk sizes: the sections shorter than both are the same passages, read back
    assert first.params["chunk_size"] != second.params["chunk_size"]
    assert second.details["vectors_reused"] > 0
    assert second.details["vectors_computed"] < first.details["vectors_computed"]
    assert result.locked is not None
    locked = result.locked
    chosen, _ = load_locked(repo.git("show", f"{locked['branch']}:configs/"
                                     f"{locked['chunk_version']}.yaml").encode(), "lock")
    assert chosen.embedder is not None
    assert chosen.embedder.fingerprint == minilm_spec.fingerprint


@pytest.mark.slow
def test_without_pgvector_a_tune_of_an_embedder_pin_is_refused_in_one_line(
        repo: RegistryRepo, dsn: str, tmp_path: Path, minilm_spec: EmbedderSpec) -> None:
    """A role that may not CREATE EXTENSION vector (PG18), or a server without it (PG15)."""
    version = lock(repo, minilm_spec)
    source, cases = corpus(tmp_path)
    role = f"r_{uuid.uuid4().hex[:10]}"
    admin = Database(dsn)
    admin.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD \'pw\'')
    admin.execute(f'GRANT CREATE ON DATABASE "{conninfo_to_dict(dsn)["dbname"]}" TO "{role}"')
    try:
        result = run_cli("tune", "--repo", repo.path, "--source", source, "--cases", cases,
                         "--base", version, "--tokenizer-file", repo.tokenizer_file,
                         "--dsn", make_conninfo(dsn, user=role, password="pw"),
                         "--trials", "1", "--chunk-size", "40:40")

        assert result.code == 7, result.stdout + result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "`CREATE EXTENSION vector;`" in result.stderr
        assert admin.query("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)",
                           (SCRATCH_PREFIX,)) == []
    finally:
        admin.execute(f'DROP OWNED BY "{role}"')
        Database(make_conninfo(dsn, dbname="postgres")).execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.slow
def test_a_pinned_base_tunes_without_tokenizer_file_up_to_the_size_lock_takes_and_its_hint_locks_it(
        repo: RegistryRepo, dsn: str, tmp_path: Path, minilm_spec: EmbedderSpec) -> None:
    """The model package's own tokenizer.json serves tune as it serves ingest (no
    --tokenizer-file); the largest size searched is the one `registry lock` takes with the
    passage prefix counted; the printed hint and --lock-best lock the config tuned, pin and
    all."""
    import shlex
    from dataclasses import replace

    from registry.config import PREFIX_BUDGET_TOKENS
    from registry.tokenizer import load_tokenizer, special_token_count

    needs_pgvector(dsn)
    version = lock(repo, minilm_spec)
    base, _ = load_locked(repo.read(f"configs/{version}.yaml").encode(), "base")
    source, cases = corpus(tmp_path)
    tokenizer = load_tokenizer(installed_model("all-MiniLM-L6-v2-int8")[1])
    prefix = len(tokenizer.encode(minilm_spec.passage_prefix, add_special_tokens=False).ids)
    assert prefix
    ceiling = (minilm_spec.max_tokens - PREFIX_BUDGET_TOKENS - special_token_count(tokenizer)
               - prefix)
    common = ["tune", "--repo", repo.path, "--source", source, "--cases", cases, "--base",
              version, "--dsn", dsn, "--trials", "1", "--overlap", "0:0", "--jaccard",
              "0.8:0.8", "--prefix-policy", "A", "--objectives", "oracle_hit_rate"]

    above = run_cli(*common, "--chunk-size", f"{ceiling + 1}:600")
    assert above.code == 1 and "passage prefix" in above.stderr, above

    text = run_cli(*common, "--chunk-size", f"{ceiling - 10}:600", "--seed", "2")
    assert text.code == 0, text.stderr
    assert f"chunk_size range cut to {ceiling - 10}:{ceiling}" in text.stdout
    hint = [line for line in text.stdout.splitlines() if line.startswith("lock it: ")]
    assert len(hint) == 1, text.stdout
    argv = shlex.split(hint[0].removeprefix("lock it: ").split(" (or rerun")[0])
    made = run_cli(*argv[1:], "--format", "json")
    assert made.code == 0, made.stderr
    locked = json.loads(made.stdout)
    hinted, _ = load_locked(repo.git("show", f"{locked['branch']}:{locked['path']}").encode(),
                            "hint")
    assert hinted.embedder == base.embedder
    assert hinted.config_hash == replace(
        base, chunk_size=hinted.chunk_size, overlap_ratio=hinted.overlap_ratio,
        jaccard_threshold=hinted.jaccard_threshold,
        prefix_policy=hinted.prefix_policy).config_hash
    assert ceiling - 10 <= hinted.chunk_size <= ceiling

    best = run_cli(*common, "--chunk-size", f"{ceiling}:600", "--lock-best", "--format", "json")
    assert best.code == 0, best.stderr
    report = json.loads(best.stdout)
    assert report["best"]["params"]["chunk_size"] == ceiling
    chosen, _ = load_locked(repo.git("show", f"{report['locked']['branch']}:configs/"
                                     f"{report['locked']['chunk_version']}.yaml").encode(), "lock")
    assert chosen.chunk_size == ceiling and chosen.embedder == base.embedder

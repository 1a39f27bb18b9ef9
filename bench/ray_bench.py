"""The Ray ingest against the built-in ingest, on the same corpus and machine (issue 19).

For each corpus size: `registry ingest --dedup corpus --workers W` (the built-in engine) and
the same with `--engine ray` (a local Ray of its own, W CPUs, started and stopped by the
command, so its start-up is part of the figure), alternated round after round (bench/fair.py's
rule: same number of rounds each, median and spread reported). Each run is a fresh process
whose whole process tree is sampled for memory (the largest single worker, and the total).
Then:
- identical result: the table's chunk ids (in doc_id, chunk_index order) hashed after every
  run; every run of both engines must give the same hash, or the bench fails;
- overhead: Ray wall time / built-in wall time (the goal: <= 1.2 at 2 workers);
- memory per worker vs corpus size: the largest worker's peak RSS at each size;
- what the database absorbs: the rows of one run COPYed into an UNLOGGED staging table (what
  the Ray workers do, in parallel) and moved into an indexed shadow table in one transaction
  (what the driver does once), each timed on this server;
- a scaling model from those measurements: N nodes chunk N times the measured per-node rate,
  the database absorbs at most the measured COPY rate (parallel shards) and moves at the
  measured move rate (one transaction), so the run rate is the slowest of the three.

With `--embed-sizes-mb`: the same race for a config that pins an embedder (the int8
all-MiniLM-L6-v2 of the installed model packages, 200-token chunks, its own tokenizer for
chunking): the built-in ingest embeds in a thread beside chunking and COPY, the Ray ingest in
`--workers` embedding actors; the embedding cache is emptied before every run, so both engines
compute every vector; every run must store the same chunk ids.

Figures carry the load average at start and end; on a busy machine (see fair.py) they are
labelled "busy" (refused without --allow-busy).

Run: `.venv/bin/python bench/ray_bench.py [--sizes-mb 2,4] [--embed-sizes-mb 0.5]
[--workers 2] [--rounds 2] [--dsn DSN] [--allow-busy]` (needs the extras `ray` and `embedded`
or a --dsn; `--embed-sizes-mb` needs `embed` and the model packages of the dev extra).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "ingest")]
from fair import is_busy, load_average, load_line  # noqa: E402
from run import TreeMemory, database, registry_cli, registry_repo  # noqa: E402

ROW_COLUMNS = ("id", "doc_id", "chunk_index", "embedding_text", "bm25_text",
               "embedding_token_count", "bm25_token_count", "chunk_version", "ingest_run_id")


# ---------------------------------------------------------------------------------------------
# corpus and tokenizer, offline and deterministic


MODULES = ("argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv",
           "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions",
           "functools", "http.client", "http.server", "inspect", "io", "ipaddress", "itertools",
           "json", "logging", "mailbox", "multiprocessing", "os", "pathlib", "pickle", "queue",
           "random", "re", "shutil", "socket", "sqlite3", "ssl", "statistics", "string",
           "subprocess", "tarfile", "tempfile", "textwrap", "threading", "typing", "unittest",
           "urllib.request", "uuid", "xml.dom.minidom", "zipfile")


def prose() -> list[str]:
    """Docstrings of standard library modules: real English, present on every machine."""
    import importlib
    import inspect
    import warnings

    texts: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in MODULES:
            module = importlib.import_module(name)
            for _, member in inspect.getmembers(module):
                doc = inspect.getdoc(member) if callable(member) else None
                if doc and len(doc) > 200:
                    texts.append(doc)
    return sorted(set(texts))


def write_corpus(path: Path, megabytes: float, texts: list[str], seed: int = 19) -> float:
    """JSONL documents of about `megabytes`: sections of real prose, 1 in 8 documents a light
    edit of an earlier one (near-duplicates across the corpus, as real corpora have)."""
    rng = random.Random(seed)
    written = 0
    documents: list[str] = []
    with path.open("w", encoding="utf-8") as handle:
        number = 0
        while written < megabytes * 1e6:
            if documents and rng.random() < 0.125:
                words = rng.choice(documents).split(" ")
                for _ in range(max(1, len(words) // 40)):
                    words[rng.randrange(len(words))] = "edited"
                text = " ".join(words)
            else:
                picked = rng.sample(texts, 6)
                text = "\n\n".join(f"## Section {i}\n\n{t}" for i, t in enumerate(picked))
                documents.append(text)
            line = json.dumps({"doc_id": f"doc-{number:06}", "title": f"Document {number}",
                               "text": text})
            handle.write(line + "\n")
            written += len(text.encode())
            number += 1
    return written / 1e6


def train_tokenizer(path: Path, texts: list[str]) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(texts, trainer=WordPieceTrainer(
        vocab_size=8000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tokenizer.save(str(path))
    return path


# ---------------------------------------------------------------------------------------------
# measurements


class WorkerMemory(TreeMemory):
    """TreeMemory that also keeps the largest single process other than the command itself
    (a chunking worker, a Ray actor or raylet): by resident memory, and by its own memory
    (resident less shared pages: Ray's object store is shared memory mapped into the workers
    that read it, bounded by the store's size, not the worker's), with the process's name."""

    def __init__(self, pid: int) -> None:
        self.largest_worker = 0
        self.largest_own = 0
        self.largest_own_name = ""
        super().__init__(pid)

    @staticmethod
    def _own_and_name(pid: int) -> tuple[int, str]:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                fields = handle.read().split()
            with open(f"/proc/{pid}/comm") as handle:
                name = handle.read().strip()
        except OSError:
            return 0, ""
        return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE"), name

    def _run(self) -> None:
        while not self._stop.is_set():
            sizes = {p: self._rss(p) for p in self._tree()}
            self.peak = max(self.peak, sum(sizes.values()))
            others = [p for p in sizes if p != self.pid]
            if others:
                self.largest_worker = max(self.largest_worker, max(sizes[p] for p in others))
                own, name = max(self._own_and_name(p) for p in others)
                if own > self.largest_own:
                    self.largest_own, self.largest_own_name = own, name
            time.sleep(0.05)


def ingest_once(repo: Path, version: str, corpus: Path, dsn: str, tokenizer: Path,
                workers: int, engine: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:  # every run computes its vectors
        if conn.execute("SELECT to_regclass('chunk_registry.embedding_cache')").fetchone() \
                != (None,):
            conn.execute("TRUNCATE chunk_registry.embedding_cache")
    command = [str(Path(sys.executable).parent / "registry"), "ingest", version, "--repo",
               str(repo), "--dsn", dsn, "--source", str(corpus), "--tokenizer-file",
               str(tokenizer), "--dedup", "corpus", "--workers", str(workers), "--format",
               "json", "--engine", engine]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    sampler = WorkerMemory(process.pid)
    out, err = process.communicate()
    sampler.stop()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{engine} ingest failed: {err.strip()[-800:]}")
    report = json.loads(out)
    return {"wall_s": wall, "pipeline_s": report["seconds"], "chunks": report["chunks"],
            "vectors_computed": report.get("vectors_computed", 0),
            "stage_seconds": (report.get("ray") or {}).get("seconds"),
            "tree_peak_mb": sampler.peak / 1e6, "largest_worker_mb": sampler.largest_worker / 1e6,
            "largest_own_mb": sampler.largest_own / 1e6,
            "largest_own_name": sampler.largest_own_name,
            "result": table_hash(dsn, report["table"])}


def table_hash(dsn: str, table: str) -> str:
    schema, name = table.split(".")
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = conn.execute(sql.SQL("SELECT id FROM {} ORDER BY doc_id, chunk_index").format(
            sql.Identifier(schema, name))).fetchall()
    return hashlib.sha256(",".join(i[0] for i in ids).encode()).hexdigest()[:16]


def absorb_rates(dsn: str, table: str) -> dict[str, float]:
    """The rows of one run COPYed (binary) into an UNLOGGED staging table, then moved into an
    indexed copy of the shadow table in one transaction: row MB/s of each."""
    schema, name = table.split(".")
    source = sql.Identifier(schema, name)
    columns = sql.SQL(", ").join(map(sql.Identifier, ROW_COLUMNS))
    with psycopg.connect(dsn, autocommit=True) as conn:
        buffer = bytearray()
        with conn.cursor().copy(sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT BINARY)"
                                        ).format(columns, source)) as copy:
            for data in copy:
                buffer += data
        conn.execute(sql.SQL("CREATE UNLOGGED TABLE bench_staging AS SELECT {} FROM {} WITH NO "
                             "DATA").format(columns, source))
        conn.execute(sql.SQL("CREATE TABLE bench_target (LIKE {} INCLUDING ALL)").format(source))
        started = time.perf_counter()
        with conn.cursor().copy(sql.SQL("COPY bench_staging ({}) FROM STDIN (FORMAT BINARY)"
                                        ).format(columns)) as copy:
            copy.write(bytes(buffer))
        copy_s = time.perf_counter() - started
        started = time.perf_counter()
        with conn.transaction():
            conn.execute(sql.SQL("INSERT INTO bench_target ({c}) SELECT {c} FROM bench_staging"
                                 ).format(c=columns))
        move_s = time.perf_counter() - started
        conn.execute("DROP TABLE bench_staging, bench_target")
    megabytes = len(buffer) / 1e6
    return {"row_mb": megabytes, "copy_mb_s": megabytes / copy_s, "move_mb_s": megabytes / move_s}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}..{max(values):.2f})"


def race(repo: Path, version: str, corpus: Path, actual: float, dsn: str, tokenizer: Path,
         args: argparse.Namespace, label: str, what: str) -> dict[str, Any]:
    """Both engines on `corpus`, alternated for `--rounds`; the figures, printed."""
    runs: dict[str, list[dict[str, Any]]] = {"builtin": [], "ray": []}
    for _ in range(args.rounds):
        for engine in ("builtin", "ray"):
            runs[engine].append(ingest_once(repo, version, corpus, dsn, tokenizer,
                                            args.workers, engine))
    every = {run["result"] for r in runs.values() for run in r}
    if len(every) != 1:
        sys.exit(f"{what}, {actual:g} MB: the engines kept different chunks: {sorted(every)}")
    builtin_wall = statistics.median(r["wall_s"] for r in runs["builtin"])
    ray_wall = statistics.median(r["wall_s"] for r in runs["ray"])
    figures = {
        "mb": round(actual, 2), "chunks": runs["builtin"][0]["chunks"],
        "vectors_computed": [r["vectors_computed"] for r in runs["builtin"] + runs["ray"]],
        "result": every.pop(),
        "overhead": round(ray_wall / builtin_wall, 2),
        "pipeline_overhead": round(
            statistics.median(r["pipeline_s"] for r in runs["ray"])
            / statistics.median(r["pipeline_s"] for r in runs["builtin"]), 2),
        **{f"{engine}_{key}": round(statistics.median(r[key] for r in run), 2)
           for engine, run in runs.items()
           for key in ("wall_s", "largest_worker_mb", "largest_own_mb", "tree_peak_mb")},
        "largest_own_names": sorted({r["largest_own_name"] for run in runs.values()
                                     for r in run}),
        "builtin_mb_s": round(actual / builtin_wall, 3),
        "ray_mb_s": round(actual / ray_wall, 3),
    }
    print(f"[{label}] {what}, {actual:.1f} MB, {args.workers} workers: built-in "
          f"{spread([r['wall_s'] for r in runs['builtin']])} s, Ray "
          f"{spread([r['wall_s'] for r in runs['ray']])} s -> Ray/built-in "
          f"{figures['overhead']:.2f}x wall ({figures['pipeline_overhead']:.2f}x "
          f"without the command's start-up); largest worker "
          f"{figures['builtin_largest_worker_mb']:.0f} MB built-in, "
          f"{figures['ray_largest_worker_mb']:.0f} MB Ray (resident; its own memory, shared "
          f"pages left out: {figures['builtin_largest_own_mb']:.0f} MB built-in, "
          f"{figures['ray_largest_own_mb']:.0f} MB Ray); same chunks "
          f"({figures['chunks']}, ids {figures['result']})", flush=True)
    figures["ray_stage_seconds"] = [r["stage_seconds"] for r in runs["ray"]]
    print(f"[{label}]   Ray's time by stage (each run): "
          + "; ".join(", ".join(f"{k} {v:.1f}" for k, v in (r["stage_seconds"] or {}).items())
                      for r in runs["ray"]), flush=True)
    return figures


def lock_minilm(repo: Path) -> tuple[str, Path]:
    """A second config pinning the installed int8 MiniLM, merged on main; its tokenizer."""
    from registry.embedding.onnx import installed_model

    out = registry_cli("lock", "--repo", str(repo), "--embedder-onnx", "all-MiniLM-L6-v2-int8",
                       "--chunk-size", "200", "--format", "json")
    version = json.loads(out)["chunk_version"]
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=bench", "-c",
                    "user.email=bench@example.com", "merge", "-q", "--no-ff", "-m", "lock",
                    f"lock/{version}"], check=True)
    return version, installed_model("all-MiniLM-L6-v2-int8")[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="2,4")
    parser.add_argument("--embed-sizes-mb", default="",
                        help="also race a config pinning the int8 MiniLM at these sizes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dsn", default=None, help="an admin DSN (default: embedded)")
    parser.add_argument("--allow-busy", action="store_true")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(load_line("start"))
    busy = is_busy(load_average()[0], cores)
    if busy and not args.allow_busy:
        sys.exit("the machine is busy (see the load average): rerun later or pass --allow-busy")
    label = "busy" if busy else "quiet"
    sizes = [float(s) for s in args.sizes_mb.split(",") if s]
    embed_sizes = [float(s) for s in args.embed_sizes_mb.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    texts = prose()
    tokenizer = train_tokenizer(work / "tokenizer.json", texts)
    results: dict[str, Any] = {"label": label, "workers": args.workers, "cores": cores,
                               "sizes": {}, "embedded_sizes": {}}
    with database(args.dsn) as dsn:
        repo, version = registry_repo(work, tokenizer)
        embedded = lock_minilm(repo) if embed_sizes else None
        registry_cli("reconcile", "--repo", str(repo), "--dsn", dsn)
        table = "public." + "document_chunks_" + version.replace("-", "_")
        for size in sizes:
            corpus = work / f"corpus-{size:g}.jsonl"
            actual = write_corpus(corpus, size, texts)
            results["sizes"][f"{size:g}"] = race(repo, version, corpus, actual, dsn, tokenizer,
                                                 args, label, "BM25-only config")
        for size in embed_sizes:
            assert embedded is not None
            corpus = work / f"corpus-{size:g}.jsonl"
            actual = write_corpus(corpus, size, texts)
            results["embedded_sizes"][f"{size:g}"] = race(
                repo, embedded[0], corpus, actual, dsn, embedded[1], args, label,
                "int8 MiniLM pinned (every vector computed)")
        absorb = absorb_rates(dsn, table) if sizes else None
    if absorb is None:
        print(load_line("end"))
        if args.output:
            args.output.write_text(json.dumps(results, indent=2) + "\n")
        return
    largest = max(sizes)
    figures = results["sizes"][f"{largest:g}"]
    node_rate = figures["builtin_mb_s"]
    rows_per_source = absorb["row_mb"] / figures["mb"]
    copy_cap = absorb["copy_mb_s"] / rows_per_source
    move_cap = absorb["move_mb_s"] / rows_per_source
    results["database"] = {k: round(v, 2) for k, v in absorb.items()}
    results["model"] = {"node_mb_s": node_rate, "rows_per_source_mb": round(rows_per_source, 2),
                        "copy_cap_source_mb_s": round(copy_cap, 2),
                        "move_cap_source_mb_s": round(move_cap, 2)}
    print(f"[{label}] database on this machine: COPY into staging {absorb['copy_mb_s']:.1f} MB/s "
          f"of rows, move into the shadow table {absorb['move_mb_s']:.1f} MB/s of rows "
          f"({rows_per_source:.2f} MB of rows per MB of source)")
    print(f"[{label}] scaling model (per node = this machine's built-in rate, "
          f"{node_rate:.2f} MB/s of source on {cores} cores):")
    for nodes in (1, 2, 4, 8, 16, 32, 64):
        chunking = nodes * node_rate
        parallel = min(chunking, copy_cap)  # the shards stream while the nodes chunk
        rate = 1 / (1 / parallel + 1 / move_cap)  # then the one move, after the last shard
        bound = "chunking" if chunking <= copy_cap else "COPY into staging"
        if move_cap < parallel:
            bound += ", then mostly the one-transaction move"
        print(f"  {nodes:>3} nodes: {rate:8.1f} MB/s of source (bound: {bound}); 100 GB in "
              f"{100e3 / rate / 3600:.1f} h")
    print(load_line("end"))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The ingest benchmark corpus: >= 50 MB of real English text found on this machine, built
offline, deterministically, once (cached in bench/results/ingest-data/).

Sources, in this order, each document as JSONL `{doc_id, title, text, kind}`:
- Python docstrings of every module of the interpreter's library (stdlib and site-packages)
  and of /usr/lib/python3, one markdown document per module: the module docstring, then
  `## Class` / `### method` sections (technical English prose, many short sections);
- Vim's help files (/usr/share/vim/*/doc/*.txt), as text documents (long-form manual);
- package READMEs (the long description in every installed *.dist-info/METADATA) and
  licence texts (dist-info LICENSE*, /usr/share/common-licenses), as markdown/text;
- Debian's per-package copyright files (licence texts again: many near-duplicates, as real
  corpora have) and Perl's POD manuals;
- Debian changelogs (release notes), only as much as the size target still needs.

Also trains the benchmark tokenizer: a BERT-style WordPiece (30,522 tokens, lowercase, the
BGE/BERT normalizer and pre-tokenizer) on a 12 MB sample of the corpus, offline.
"""

from __future__ import annotations

import ast
import glob
import gzip
import hashlib
import json
import multiprocessing
import os
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from email.parser import BytesHeaderParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("BENCH_DATA", ROOT / "bench" / "results" / "ingest-data"))
CORPUS = DATA / "corpus.jsonl"
MANIFEST = DATA / "corpus.json"
TOKENIZER = DATA / "tokenizer.json"
TARGET_BYTES = 64 * 1024 * 1024
Doc = dict[str, str]


def _docstring_document(path: str, root: str) -> Doc | None:
    warnings.simplefilter("ignore")
    try:
        with open(path, "rb") as handle:
            tree = ast.parse(handle.read())
    except (SyntaxError, ValueError, OSError, RecursionError):
        return None
    name = os.path.relpath(path, root).removesuffix(".py").replace(os.sep, ".")
    parts = []
    if (module_doc := ast.get_docstring(tree)) is not None:
        parts.append(module_doc)
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if (doc := ast.get_docstring(node)) is not None:
                parts.append(f"## {node.name}\n\n{doc}")
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and (
                            doc := ast.get_docstring(item)) is not None:
                        parts.append(f"### {node.name}.{item.name}\n\n{doc}")
    text = "\n\n".join(parts)
    if len(text) < 200:
        return None
    return {"doc_id": f"python:{root}:{name}", "title": name, "text": f"# {name}\n\n{text}\n",
            "kind": "markdown"}


def _python_files() -> list[tuple[str, str]]:
    roots = [sysconfig.get_paths()["stdlib"], "/usr/lib/python3"]
    found = []
    for root in roots:
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if d not in ("test", "tests", "__pycache__"))
            found.extend((os.path.join(directory, f), root) for f in sorted(files)
                         if f.endswith(".py"))
    return found


def _read(path: str) -> str | None:
    try:
        if path.endswith(".gz"):
            with gzip.open(path) as handle:
                return handle.read().decode("utf-8")
        return Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return None


def _files(pattern: str, kind: str, prefix: str, minimum: int = 200) -> Iterator[Doc]:
    for path in sorted(glob.glob(pattern, recursive=True)):
        text = _read(path)
        if text and len(text.strip()) >= minimum:
            title = f"{Path(path).parent.name}/{Path(path).name}"  # e.g. gzip/copyright
            yield {"doc_id": f"{prefix}:{path}", "title": title, "text": text, "kind": kind}


def _package_dirs() -> list[str]:
    """Where installed distributions live: this interpreter's and the system's site dirs."""
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    roots.update(glob.glob("/usr/lib/python3*/dist-packages"))
    roots.update(glob.glob("/usr/local/lib/python3*/dist-packages"))
    roots.update(glob.glob("/root/.pyenv/versions/*/lib/python3*/site-packages"))
    return sorted(r for r in roots if os.path.isdir(r) and not r.startswith("/work"))


def _readmes() -> Iterator[Doc]:
    parser = BytesHeaderParser()
    metadata = sorted(p for root in _package_dirs()
                      for p in glob.glob(f"{root}/*.dist-info/METADATA"))
    for path in metadata:
        raw = Path(path).read_bytes()
        message = parser.parsebytes(raw)
        body = raw.split(b"\n\n", 1)[1] if b"\n\n" in raw else b""
        text = body.decode("utf-8", errors="replace") if body else ""
        if len(text) >= 500:
            kind = "markdown" if "markdown" in (message.get("Description-Content-Type") or "")\
                else "text"
            yield {"doc_id": f"readme:{path}", "title": message.get("Name") or path,
                   "text": text, "kind": kind}


def _sources() -> Iterator[tuple[str, Iterator[Doc]]]:
    files = _python_files()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        docs = [d for d in pool.starmap(_docstring_document, files, chunksize=64) if d]
    yield "python docstrings", iter(docs)
    yield "vim help", _files("/usr/share/vim/*/doc/*.txt", "text", "vim")
    yield "package READMEs", _readmes()
    for root in _package_dirs():
        yield f"licences ({root})", _files(f"{root}/*.dist-info/**/LICENSE*", "text", "license")
    yield "common licences", _files("/usr/share/common-licenses/*", "text", "license")
    yield "debian copyright", _files("/usr/share/doc/*/copyright", "text", "copyright")
    yield "perl pod", _files("/usr/share/perl/**/*.pod", "text", "pod")
    yield "debian changelogs", _files("/usr/share/doc/*/changelog*.gz", "text", "changelog")


def build(target: int = TARGET_BYTES) -> dict[str, object]:
    """Write the corpus (unless already there) and return its manifest."""
    if MANIFEST.exists() and CORPUS.exists():
        return dict(json.loads(MANIFEST.read_text()))
    DATA.mkdir(parents=True, exist_ok=True)
    total = 0
    sources: dict[str, dict[str, int]] = {}
    seen: set[str] = set()
    partial = CORPUS.with_suffix(".partial")
    with partial.open("w") as out:
        for name, docs in _sources():
            for doc in docs:
                if total >= target:
                    break
                if doc["doc_id"] in seen:
                    continue
                seen.add(doc["doc_id"])
                line = json.dumps(doc, ensure_ascii=False)
                out.write(line + "\n")
                size = len(doc["text"].encode())
                total += size
                entry = sources.setdefault(name, {"documents": 0, "bytes": 0})
                entry["documents"] += 1
                entry["bytes"] += size
    partial.rename(CORPUS)
    manifest = {"bytes": total, "documents": sum(s["documents"] for s in sources.values()),
                "sources": sources,
                "sha256": hashlib.sha256(CORPUS.read_bytes()).hexdigest()}
    MANIFEST.write_text(json.dumps(manifest, indent=2))
    return manifest


def documents(limit_bytes: int | None = None) -> Iterator[Doc]:
    """The corpus documents in order, stopping once `limit_bytes` of text have been given."""
    given = 0
    with CORPUS.open() as handle:
        for line in handle:
            doc: Doc = json.loads(line)
            yield doc
            given += len(doc["text"].encode())
            if limit_bytes is not None and given >= limit_bytes:
                return


def tokenizer() -> Path:
    """The benchmark WordPiece tokenizer (trained once, offline, on a corpus sample)."""
    if TOKENIZER.exists():
        return TOKENIZER
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    sample = [d["text"] for i, d in enumerate(documents()) if i % 4 == 0]
    budget, texts = 12 * 1024 * 1024, []
    for text in sample:
        texts.append(text)
        budget -= len(text)
        if budget <= 0:
            break
    model = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    model.normalizer = normalizers.BertNormalizer(lowercase=True)
    model.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    model.decoder = decoders.WordPiece()
    model.train_from_iterator(texts, WordPieceTrainer(
        vocab_size=30522, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls_id, sep_id = model.token_to_id("[CLS]"), model.token_to_id("[SEP]")
    model.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    model.save(str(TOKENIZER))
    return TOKENIZER


if __name__ == "__main__":
    manifest = build()
    path = tokenizer()
    json.dump({"manifest": manifest, "tokenizer": str(path)}, sys.stdout, indent=2)
    sys.stdout.write("\n")

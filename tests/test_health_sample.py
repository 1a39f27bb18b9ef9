"""The re-tokenized sample of `registry health`: each sampled row tokenized once, and exactly
what a plain re-tokenization of both texts finds (issue 13: health within 3x of count(*) with
the sample, without weakening detection), for a whitespace-splitting WordPiece tokenizer and
a byte-level BPE one whose counts are not additive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from tokenizers import Tokenizer

from registry.commands.data import ingest
from registry.commands.reconcile import reconcile
from registry.database.chunk_table import ChunkTable, chunk_table, split_prefix
from registry.quality.health import check_sample
from registry.repository.git import Git
from registry.repository.state import read_state
from registry.tokenizer import load_tokenizer
from tests.database import Database, table_of
from tests.helpers import RegistryRepo, training_text
from tests.test_health_eval import Corpus


class CountingTokenizer:
    """The real tokenizer, counting the characters it is asked to encode."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.characters = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.tokenizer, name)
        if name.startswith("encode_batch"):
            def counted(texts: list[str], *args: Any, **kwargs: Any) -> Any:
                self.characters += sum(map(len, texts))
                return attribute(texts, *args, **kwargs)
            return counted
        if name == "encode":
            def one(text: str, *args: Any, **kwargs: Any) -> Any:
                self.characters += len(text)
                return attribute(text, *args, **kwargs)
            return one
        return attribute


def byte_level_bpe(path: Path) -> Path:
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(training_text(), trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<s>", "</s>"]))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    tokenizer.save(str(path))
    return path


def filled_table(registry_repo: RegistryRepo, dsn: str, corpus: Corpus, policy: str) -> ChunkTable:
    """A table ingested from the corpus, then damaged as a writer could: false counts, a
    bm25_text that is not the body, a leaked prefix, a row over chunk_size by its text."""
    version = registry_repo.locked(prefix_policy=policy, chunk_size=120)
    reconcile(registry_repo.path, dsn=dsn)
    ingest(registry_repo.path, version, corpus.path, dsn=dsn,
           tokenizer_file=registry_repo.tokenizer_file, workers=1)
    db, table = Database(dsn), table_of(version)
    db.execute(f"UPDATE {table} SET embedding_token_count = embedding_token_count + 3 "
               "WHERE chunk_index = 1")
    db.execute(f"UPDATE {table} SET bm25_token_count = bm25_token_count - 1 WHERE chunk_index = 2")
    db.execute(f"UPDATE {table} SET bm25_text = bm25_text || ' extra words' WHERE chunk_index = 3")
    db.execute(f"UPDATE {table} SET bm25_text = embedding_text WHERE chunk_index = 4")
    db.execute(f"UPDATE {table} SET embedding_text = embedding_text || repeat(' registry', 200), "
               "bm25_text = bm25_text || repeat(' registry', 200) WHERE chunk_index = 5")
    return chunk_table(read_state(Git(registry_repo.path), "main"), version)


def reference(conn: psycopg.Connection[Any], target: ChunkTable,
              tokenizer: Tokenizer) -> tuple[int, int, int]:
    """(rows, count mismatches, over budget) by encoding every row's two texts on their own."""
    config = target.config
    rows = conn.execute(f"SELECT embedding_text, bm25_text, embedding_token_count, "
                        f"bm25_token_count FROM {target.table}").fetchall()
    mismatches = over = 0
    for embedding_text, bm25_text, stored_embedding, stored_bm25 in rows:
        embedding = len(tokenizer.encode(embedding_text, add_special_tokens=True))
        bm25 = len(tokenizer.encode(bm25_text, add_special_tokens=False))
        body = (len(tokenizer.encode(split_prefix(embedding_text)[1], add_special_tokens=False))
                if config.prefix_policy == "B" else bm25)
        mismatches += (embedding, bm25) != (stored_embedding, stored_bm25)
        over += body > config.chunk_size or embedding > config.token_budget
    return len(rows), mismatches, over


@pytest.mark.parametrize("policy", ["A", "B"])
def test_the_sample_finds_exactly_what_a_plain_re_tokenization_finds(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus, tmp_path: Path, policy: str,
) -> None:
    target = filled_table(registry_repo, dsn, corpus, policy)
    for path in (registry_repo.tokenizer_file, byte_level_bpe(tmp_path / "bpe.json")):
        tokenizer = load_tokenizer(path)
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows, mismatches, over = reference(conn, target, tokenizer)
            check = check_sample(conn, target, 10_000, tokenizer)

        assert mismatches > 0 and over > 0
        assert (check.checked, check.count_mismatches, check.over_budget) == (
            rows, mismatches, over), path


def test_the_sample_tokenizes_less_text_than_its_rows_hold(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus
) -> None:
    """Encoding every sampled text whole (both texts of each row) is what cost ~0.5 s at the
    default sample: a whitespace-splitting tokenizer is given each distinct word once."""
    target = filled_table(registry_repo, dsn, corpus, "A")
    counting = CountingTokenizer(load_tokenizer(registry_repo.tokenizer_file))
    with psycopg.connect(dsn, autocommit=True) as conn:
        held = conn.execute(f"SELECT sum(length(embedding_text)) FROM {target.table}").fetchone()
        check = check_sample(conn, target, 10_000, counting)  # type: ignore[arg-type]

    assert held is not None and check.checked > 50
    assert counting.characters < held[0] / 2, (counting.characters, held[0])

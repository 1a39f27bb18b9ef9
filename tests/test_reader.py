"""Reader gold usage against a local OpenAI-compatible chat server whose model really reads:
an extractive answerer over the passages it is given (tests/chat_server.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.errors import EmbedderError
from registry.quality.reader import GOLD_JACCARD, ChatReader, gold_used
from tests.chat_server import ExtractiveChat
from tests.helpers import RegistryRepo, run_cli
from tests.test_hybrid_retrieval import ingested

TOKEN = "sk-reader-secret-7f3a"


def test_gold_usage_is_token_set_jaccard_at_0_32() -> None:
    assert GOLD_JACCARD == 0.32
    # 8 of 25 distinct words shared: 0.32 exactly counts; one word fewer does not.
    shared = [f"w{i}" for i in range(8)]
    answer = " ".join(shared + [f"a{i}" for i in range(9)])
    gold = " ".join(shared + [f"g{i}" for i in range(8)])
    assert gold_used(answer, gold)
    assert not gold_used(answer + " a9", gold)
    assert gold_used("The Answer, is: 42!", "the answer is 42")


def test_the_reader_answers_from_the_passages_it_is_given() -> None:
    with ExtractiveChat(token=TOKEN, failures=[503]) as chat:
        reader = ChatReader(chat.base_url, chat.model, TOKEN, sleep=lambda _: None)
        answer = reader.answer("what do cats do at dusk",
                               ["The violin has four strings.", "Cats sleep all day. They hunt "
                                "at dusk. Dogs bark."])
        assert answer == "They hunt at dusk."
        assert reader.answer("what do cats do at dusk", []) == "I don't know."
        assert [r["path"] for r in chat.received] == ["/v1/chat/completions"] * 3
        assert chat.received[-1]["authorization"] == f"Bearer {TOKEN}"
        assert chat.received[-1]["body"]["temperature"] == 0


def test_a_refusing_reader_is_one_line_without_the_token(tmp_path: Path) -> None:
    with ExtractiveChat(token="another") as chat:
        reader = ChatReader(chat.base_url, chat.model, TOKEN)
        with pytest.raises(EmbedderError, match="refused the request \\(401") as caught:
            reader.answer("q", ["p"])
    assert TOKEN not in str(caught.value) and caught.value.exit_code == 12


@pytest.mark.slow
def test_eval_measures_reader_gold_usage_from_the_retrieved_chunks(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version, cases = ingested(registry_repo, dsn, tmp_path)
    monkeypatch.setenv("REGISTRY_READER_TOKEN", TOKEN)
    with ExtractiveChat(token=TOKEN) as chat:
        result = run_cli("eval", version, "--repo", registry_repo.path, "--dsn", dsn, "--cases",
                         cases, "--reader-url", chat.base_url, "--reader-model", chat.model,
                         "--format", "json")
        asked = len(chat.received)
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    # BM25 retrieves nothing for the paraphrase (no word in common), so the reader cannot
    # answer it; the other two answers are the passages' sentences, which hold the gold.
    assert {c["query_id"]: c["gold_used"] for c in data["cases"]} == {
        "paraphrase": False, "lexical": True, "plants": True}
    assert data["metrics"]["reader_gold_usage"] == pytest.approx(2 / 3)
    assert asked == 3 and TOKEN not in result.stdout + result.stderr

    without = json.loads(run_cli("eval", version, "--repo", registry_repo.path, "--dsn", dsn,
                                 "--cases", cases, "--format", "json").stdout)
    assert "reader_gold_usage" not in without["metrics"]

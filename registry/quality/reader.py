"""Reader gold usage: does a reader model, given a case's retrieved chunks, answer with the gold
answer? The original pipeline's measure: the token-set Jaccard of the reader's answer and
gt_answer >= 0.32 counts as "gold used".

The reader is any OpenAI-compatible `POST {base}/chat/completions` (OpenAI, vLLM, Ollama, TGI,
a LiteLLM proxy): REGISTRY_READER_URL (the API base, ending in /v1), REGISTRY_READER_MODEL and
the token REGISTRY_READER_TOKEN, which goes only into the Authorization header and is masked in
any server text an error repeats. Temperature 0, one request per case, retried with backoff on
429/5xx and dropped connections like the embeddings client.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from registry.embedding.openai import RetryPolicy, _detail, _retry_after
from registry.errors import EmbedderError
from registry.http import no_redirect_opener
from registry.quality.evaluation import jaccard, tokens

GOLD_JACCARD = 0.32
URL_ENV = "REGISTRY_READER_URL"
MODEL_ENV = "REGISTRY_READER_MODEL"
TOKEN_ENV = "REGISTRY_READER_TOKEN"
SYSTEM_PROMPT = ("Answer the question using only the numbered context passages. Answer with "
                 "the words of the passage that answers it, in one sentence.")


class ReaderError(EmbedderError):
    """The reader model's endpoint refuses or keeps failing (exit 12, as for an embedder: a
    model the evaluation needs cannot run)."""


def gold_used(answer: str, gt_answer: str) -> bool:
    """The reader used the gold: token-set Jaccard of answer and gold >= 0.32."""
    return jaccard(tokens(answer), tokens(gt_answer)) >= GOLD_JACCARD


def prompt(question: str, contexts: Sequence[str]) -> str:
    """The user message: numbered passages, then the question."""
    passages = "\n".join(f"[{n}] {' '.join(text.split())}" for n, text in enumerate(contexts, 1))
    return f"Context:\n{passages}\n\nQuestion: {question}"


@dataclass
class ChatReader:
    """A chat model behind an OpenAI-compatible endpoint that answers from given passages."""

    base_url: str
    model: str
    token: str | None = None
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_env(cls, url: str | None = None, model: str | None = None,
                 env: Mapping[str, str] | None = None) -> ChatReader:
        env = os.environ if env is None else env
        base = url or env.get(URL_ENV, "")
        name = model or env.get(MODEL_ENV, "")
        if not base or not name:
            raise ReaderError("the reader needs an endpoint and a model",
                              fix=f"pass --reader-url and --reader-model (or set {URL_ENV} and "
                                  f"{MODEL_ENV})")
        return cls(base.rstrip("/"), name, env.get(TOKEN_ENV) or None)

    def __repr__(self) -> str:
        return f"ChatReader({self.endpoint!r}, model={self.model!r})"

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def answer(self, question: str, contexts: Sequence[str]) -> str:
        """The reader's answer from `contexts`, retried while the failure is transient."""
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return self._once(question, contexts)
            except _Transient as err:
                if attempt == self.retry.attempts:
                    raise ReaderError(f"reader endpoint {self.endpoint} failed {attempt} times; "
                                      f"last: {err.reason}", fix="retry later") from None
                wait = self.retry.delay(attempt) if err.retry_after is None else err.retry_after
                if wait > self.retry.max_retry_after:
                    raise ReaderError(f"reader endpoint {self.endpoint} asks to retry after "
                                      f"{wait:.0f} s ({err.reason})", fix="retry later") from None
                self.sleep(wait)
        raise AssertionError("unreachable: the loop returns or raises")

    def _once(self, question: str, contexts: Sequence[str]) -> str:
        body = json.dumps({"model": self.model, "temperature": 0, "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt(question, contexts)}]})
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.endpoint, data=body.encode(), headers=headers,
                                         method="POST")
        try:
            with no_redirect_opener().open(
                    request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = self._scrub(_detail(err.read()))
            if err.code == 429 or err.code >= 500:
                raise _Transient(f"{err.code} {detail}".strip(),
                                 _retry_after(err.headers.get("Retry-After"))) from None
            raise ReaderError(f"reader endpoint {self.endpoint} refused the request ({err.code} "
                              f"{detail})".replace(" )", ")"),
                              fix=f"check {MODEL_ENV}, {TOKEN_ENV} and that {URL_ENV} is the "
                                  "API base (ending in /v1)") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", None) or err
            raise _Transient(f"connection failed: {self._scrub(str(reason))}") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise ReaderError(f"reader endpoint {self.endpoint} answered without a chat "
                              f"completion ({type(err).__name__})",
                              fix=f"check that {URL_ENV} points at an OpenAI-compatible API"
                              ) from None
        return str(content or "")

    def _scrub(self, text: str) -> str:
        if self.token:
            text = text.replace(self.token, "***")
        return " ".join(text.split())[:200]


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after

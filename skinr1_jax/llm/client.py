"""A small OpenAI-compatible chat-completions client (standard library only).

Used, when `generate.llm.enabled`, to phrase DDx comparisons and to read a user's textbook
captions. Every failure surfaces as `LLMError` with the URL and the reason, so callers can
fall back to templates without guessing what went wrong.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

# HTTP statuses worth retrying: rate limits and transient server trouble.
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class LLMError(RuntimeError):
    """The endpoint could not give a usable answer; the message names URL and reason."""


@dataclass(frozen=True)
class ChatClient:
    """POSTs `{model, messages, temperature, max_tokens}` to `<url>` and returns the text.

    `url` is either the full chat-completions URL or a base URL (`.../v1`), to which
    `/chat/completions` is appended.
    """

    url: str
    model: str
    api_key: str = ""
    timeout_s: float = 30.0
    retries: int = 2
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise LLMError(f"LLM url {self.url!r} must start with http:// or https://")
        if self.timeout_s <= 0:
            raise LLMError(f"LLM timeout_s must be > 0, got {self.timeout_s}")
        if self.retries < 0:
            raise LLMError(f"LLM retries must be >= 0, got {self.retries}")

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def chat(self, messages: Sequence[Mapping[str, str]], *, temperature: float = 0.0,
             max_tokens: int = 256) -> str:
        """One completion for `messages`; retries transient failures, then raises LLMError."""
        body = json.dumps({"model": self.model, "messages": [dict(m) for m in messages],
                           "temperature": float(temperature),
                           "max_tokens": int(max_tokens)}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.endpoint, data=body, headers=headers,
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = response.read()
            except urllib.error.HTTPError as e:
                detail = e.read()[:200].decode("utf-8", "replace")
                last = f"HTTP {e.code}: {detail}"
                if e.code in _RETRY_STATUS:
                    continue
                raise LLMError(f"LLM endpoint {self.endpoint} answered {last}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
                continue
            return _content(payload, self.endpoint)
        raise LLMError(f"LLM endpoint {self.endpoint} failed after {self.retries + 1} "
                       f"attempt(s): {last}")

    def ask(self, system: str, user: str, *, temperature: float = 0.0,
            max_tokens: int = 256) -> str:
        return self.chat([{"role": "system", "content": system},
                          {"role": "user", "content": user}],
                         temperature=temperature, max_tokens=max_tokens)


def _content(payload: bytes, endpoint: str) -> str:
    try:
        data: Any = json.loads(payload)
        text = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise LLMError(f"LLM endpoint {endpoint} returned no choices[0].message.content: "
                       f"{payload[:200]!r}") from None
    if not isinstance(text, str) or not text.strip():
        raise LLMError(f"LLM endpoint {endpoint} returned an empty message")
    return text.strip()


def client_from_config(llm_cfg: Any, retries: int = 2) -> ChatClient:
    """A ChatClient from the `generate.llm` ConfigDict (url, model, api_key_env, timeout_s).

    The key is read from the environment variable named by `api_key_env` so it never lands
    in a config file or the workdir's resolved config.
    """
    if not llm_cfg.url:
        raise LLMError("generate.llm.enabled is set but generate.llm.url is empty")
    if not llm_cfg.model:
        raise LLMError("generate.llm.enabled is set but generate.llm.model is empty")
    key = os.environ.get(llm_cfg.api_key_env, "") if llm_cfg.api_key_env else ""
    return ChatClient(url=llm_cfg.url, model=llm_cfg.model, api_key=key,
                      timeout_s=float(llm_cfg.timeout_s), retries=retries)

"""The OpenAI-compatible client and the generator's LLM path, against a stub server on loopback."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ml_collections import ConfigDict

from skinr1_jax.llm import ChatClient, LLMError, client_from_config


class Stub:
    """A chat-completions endpoint on 127.0.0.1; `reply(body) -> (status, payload bytes)`."""

    def __init__(self, reply):
        self.reply = reply
        self.requests: list[tuple[str, dict, dict]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, dict(self.headers), body))
                status, payload = stub.reply(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def answer(text: str) -> tuple[int, bytes]:
    return 200, json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


@pytest.fixture
def stub():
    servers = []

    def make(reply):
        servers.append(Stub(reply))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_chat_posts_openai_request_and_returns_content(stub):
    s = stub(lambda body: answer("  a reply  "))
    client = ChatClient(url=s.url, model="m-1", api_key="sekret", timeout_s=5)
    out = client.ask("sys", "hello", temperature=0.3, max_tokens=17)
    assert out == "a reply"
    (path, headers, body), = s.requests
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sekret"
    assert body == {"model": "m-1", "temperature": 0.3, "max_tokens": 17,
                    "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}]}
    # A full endpoint URL is used as given; no key, no Authorization header.
    ChatClient(url=s.url + "/chat/completions", model="m").ask("s", "u")
    assert s.requests[-1][0] == "/v1/chat/completions"
    assert "Authorization" not in s.requests[-1][1]


def test_retries_transient_errors_then_succeeds(stub):
    replies = iter([(503, b"busy"), (429, b"slow down"), answer("ok")])
    s = stub(lambda body: next(replies))
    assert ChatClient(url=s.url, model="m", retries=2, backoff_s=0.01).ask("s", "u") == "ok"
    assert len(s.requests) == 3


def test_gives_up_with_a_clear_error(stub):
    s = stub(lambda body: (503, b"busy"))
    with pytest.raises(LLMError, match=r"failed after 2 attempt\(s\): HTTP 503: busy"):
        ChatClient(url=s.url, model="m", retries=1, backoff_s=0.01).ask("s", "u")
    assert len(s.requests) == 2


def test_client_errors_are_not_retried(stub):
    s = stub(lambda body: (401, b'{"error": "bad key"}'))
    with pytest.raises(LLMError, match=r"chat/completions answered HTTP 401.*bad key"):
        ChatClient(url=s.url, model="m", retries=3, backoff_s=0.01).ask("s", "u")
    assert len(s.requests) == 1


@pytest.mark.parametrize("payload", [b"not json", b'{"choices": []}', b'{"choices": [{"message": {"content": ""}}]}'])
def test_malformed_answers_raise(stub, payload):
    s = stub(lambda body: (200, payload))
    with pytest.raises(LLMError, match="chat/completions"):
        ChatClient(url=s.url, model="m", retries=0).ask("s", "u")


def test_timeout_and_refused_connection(stub):
    def slow(body):
        time.sleep(1.0)
        return answer("late")

    s = stub(slow)
    start = time.monotonic()
    with pytest.raises(LLMError, match="1 attempt"):
        ChatClient(url=s.url, model="m", timeout_s=0.2, retries=0).ask("s", "u")
    assert time.monotonic() - start < 0.9
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]   # bound but not listening: connections are refused
        with pytest.raises(LLMError, match=f"127.0.0.1:{port}"):
            ChatClient(url=f"http://127.0.0.1:{port}", model="m", retries=0).ask("s", "u")


def test_config_validation(monkeypatch):
    cfg = ConfigDict(dict(enabled=True, url="", model="m", api_key_env="SKINR1_TEST_KEY",
                          temperature=0.2, max_tokens=120, timeout_s=3.0))
    with pytest.raises(LLMError, match="generate.llm.url"):
        client_from_config(cfg)
    cfg.url = "ftp://example"
    with pytest.raises(LLMError, match="http"):
        client_from_config(cfg)
    cfg.url = "http://127.0.0.1:9/v1"
    monkeypatch.setenv("SKINR1_TEST_KEY", "k123")
    client = client_from_config(cfg)
    assert client.api_key == "k123" and client.timeout_s == 3.0 and client.endpoint.endswith("/v1/chat/completions")
    cfg.model = ""
    with pytest.raises(LLMError, match="generate.llm.model"):
        client_from_config(cfg)


# ---- the generator's LLM path ----------------------------------------------------------------
def _favoured(body: dict) -> tuple[str, str]:
    m = re.search(r"fit (.+?) better than (.+?): which", body["messages"][-1]["content"])
    return m.group(1), m.group(2)


@pytest.fixture(scope="module")
def default_setup():
    from configs.default import get_config
    from skinr1_jax.knowledge import load_default_kb
    from skinr1_jax.taxonomy import load_default_taxonomy
    tax = load_default_taxonomy()
    kb = load_default_kb(tax)
    names = ["psoriasis", "seborrheic keratosis", "basal cell carcinoma"]
    examples = [{"id": n, "node": tax.id(n), "concepts": list(kb.profile(tax.id(n)).concepts)[:3]} for n in names]
    cfg = get_config().generate
    cfg.types = ("basic", "ddx_keep", "ddx_switch", "random_keep", "random_switch")
    cfg.per_diagnosis_per_type = 2
    cfg.llm.enabled = True
    return tax, kb, examples, cfg


def test_generator_uses_verified_llm_comparisons(stub, default_setup):
    from skinr1_jax.trajectories import generate_trajectories, verify
    tax, kb, examples, cfg = default_setup

    def reply(body):
        good, bad = _favoured(body)
        return answer(f"<differential diagnosis reasoning>The findings match {good} closely, "
                      f"and the hallmark signs of {bad} are absent.</differential diagnosis reasoning>")

    s = stub(reply)
    client = ChatClient(url=s.url, model="m", retries=0)
    result = generate_trajectories(examples, tax, kb, cfg, seed=0, client=client)
    n_compare = sum(v for k, v in result.counts.items() if k != "basic")
    assert result.llm == {"used": n_compare} and len(s.requests) == n_compare
    ddx = kb.ddx_graph()
    for t in result.trajectories:
        assert verify(t, tax, ddx, cfg) == []
        if t["type"] != "basic":
            assert f"The findings match {t['label']} closely" in t["response"]
            assert "reasoning>" not in t["response"]


@pytest.mark.parametrize("mode", ["third_disease", "wrong_winner", "error", "too_long"])
def test_generator_falls_back_to_templates(stub, default_setup, mode):
    from skinr1_jax.trajectories import generate_trajectories, verify
    tax, kb, examples, cfg = default_setup

    def reply(body):
        good, bad = _favoured(body)
        if mode == "third_disease":
            third = next(n for n in ("vitiligo", "scabies") if n not in (good, bad))
            return answer(f"The findings fit {good}, though {third} must also be excluded.")
        if mode == "wrong_winner":
            return answer(f"This is clearly {bad}.")
        if mode == "too_long":
            return answer(f"{good} " + "word " * 80)
        return 500, b"down"

    s = stub(reply)
    result = generate_trajectories(examples, tax, kb, cfg, seed=0, client=ChatClient(url=s.url, model="m", retries=0))
    plain = generate_trajectories(examples, tax, kb, _without_llm(cfg), seed=0)
    n_compare = sum(v for k, v in result.counts.items() if k != "basic")
    assert result.llm == {"fallback": n_compare}
    # A fallback is exactly the template trajectory.
    assert result.trajectories == plain.trajectories
    ddx = kb.ddx_graph()
    assert all(verify(t, tax, ddx, cfg) == [] for t in result.trajectories)


def _without_llm(cfg: ConfigDict) -> ConfigDict:
    out = ConfigDict(cfg.to_dict())
    out.llm.enabled = False
    return out

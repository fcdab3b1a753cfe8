"""Growing the KB from user text through the LLM backend, against a stub server on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from skinr1_jax.knowledge import KnowledgeBase, load_default_kb
from skinr1_jax.knowledge.extract import (ExtractionError, Passage, check_rule, extract_knowledge,
                                          grow_kb_file, merge_extraction, parse_ddx_answer,
                                          parse_rule_answer, read_passages)
from skinr1_jax.llm import ChatClient
from skinr1_jax.taxonomy import load_default_taxonomy

# What the stub model answers, keyed by a phrase of the passage it is sent.
ANSWERS = {
    "stuck-on": "<rule>A waxy, stuck-on brown papule with a verrucous surface indicates seborrheic "
                "keratosis.</rule><diagnosis>Seborrheic keratoses</diagnosis>",
    "biopsy": "NOT A RULE",
    "lipoma": "<rule>A soft, mobile, skin-coloured dome-shaped nodule indicates a lipoma.</rule>"
              "<diagnosis>Lipomas</diagnosis>",
    "unicorn": "<rule>A red plaque indicates unicorn dermatosis.</rule><diagnosis>unicorn dermatosis</diagnosis>",
    "history": "<rule>A long history of itching indicates eczema.</rule><diagnosis>eczema</diagnosis>",
    "garbled": "I am not sure.",
    "differential diagnosis of psoriasis": (
        "<ddx>Psoriasis: Lichen simplex (thick lichenified plaque without silvery scale); "
        "pityriasis rosea (herald patch and collarette scale); made-up rash (something); "
        "Psoriasis (itself); seborrheic dermatitis</ddx>"),
    "differential diagnosis of glomus": "<ddx>Glomus tumour: angioleiomyoma (skin-coloured, not blue)</ddx>",
}


@pytest.fixture
def server():
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            user = body["messages"][-1]["content"].lower()
            text = next((a for key, a in ANSWERS.items() if key in user), None)
            if text is None:
                self.send_response(500)
                self.end_headers()
                return
            payload = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield ChatClient(url=f"http://127.0.0.1:{srv.server_address[1]}/v1", model="stub", retries=0), requests
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def tax():
    return load_default_taxonomy()


PASSAGES = [
    Passage("c1", "Figure 3. Multiple stuck-on brown papules on the back.", "caption"),
    Passage("c2", "Figure 4. Biopsy specimen stained with H&E.", "caption"),
    Passage("c3", "Figure 5. Lipoma on the forearm.", "caption"),
    Passage("c4", "Figure 6. Unicorn dermatosis.", "caption"),
    Passage("c5", "Figure 7. Patient with a long history of eczema.", "caption"),
    Passage("c6", "Figure 8. garbled scan.", "caption"),
    Passage("c7", "Figure 9. this one makes the server fail.", "caption"),
    Passage("d1", "The differential diagnosis of psoriasis includes lichen simplex ...", "ddx"),
    Passage("d2", "The differential diagnosis of glomus tumor is angioleiomyoma ...", "ddx"),
]


def test_extraction_normalises_validates_and_reports(server, tax):
    client, requests = server
    ex = extract_knowledge(PASSAGES, client, tax)
    assert len(requests) == len(PASSAGES)
    assert all(r["temperature"] == 0.0 for r in requests)
    by_name = {e["name"]: e for e in ex.entries}
    assert by_name["seborrheic keratosis"]["rules"] == [
        "A waxy, stuck-on brown papule with a verrucous surface indicates seborrheic keratosis."]
    assert by_name["lipoma"]["rules"] == ["A soft, mobile, skin-coloured dome-shaped nodule indicates a lipoma."]
    assert by_name["psoriasis"]["differentials"] == [
        ["lichen simplex", "thick lichenified plaque without silvery scale"],
        ["pityriasis rosea", "herald patch and collarette scale"]]
    assert by_name["glomus tumor"]["differentials"] == [["angioleiomyoma", "skin-coloured, not blue"]]
    assert "eczema" not in by_name and "unicorn dermatosis" not in by_name
    reasons = dict.fromkeys(pid for pid, _ in ex.rejected)
    assert {"c4", "c5", "c6", "c7", "d1"} <= set(reasons) and "c2" not in reasons
    text = " | ".join(f"{pid}: {r}" for pid, r in ex.rejected)
    assert "'unicorn dermatosis' does not resolve" in text
    assert "no visible finding" in text
    assert "unparseable" in text and "llm:" in text
    assert "'made-up rash' does not resolve" in text and "is 'Psoriasis' itself" in text
    assert "'seborrheic dermatitis' of 'Psoriasis' has no separating feature" in text
    assert ex.stats["not_a_rule"] == 1 and ex.stats["rules"] == 2 and ex.stats["differentials"] == 3


def test_merge_into_kb_and_round_trip(server, tax, tmp_path):
    client, _ = server
    kb = load_default_kb(tax)
    before_sk = kb.rules(tax.id("seborrheic keratosis"))
    ex = extract_knowledge(PASSAGES, client, tax)
    merged = merge_extraction(kb, ex)
    sk = merged.rules(tax.id("seborrheic keratosis"))
    assert sk[: len(before_sk)] == before_sk and len(sk) == len(before_sk) + 1
    assert tax.id("lipoma") in merged and tax.id("lipoma") not in kb
    assert merged.rules(tax.id("lipoma")) == tuple(ex.entries[[e["name"] for e in ex.entries].index("lipoma")]["rules"])
    # The glomus tumor got differentials but no rule and has no profile: it cannot stand alone.
    assert tax.id("glomus tumor") not in merged
    assert ("glomus tumor", "differentials for a disease without any rule") in ex.rejected
    assert tax.id("lichen simplex") in merged.ddx_graph().neighbors(tax.id("psoriasis"))
    # The whole file path: CSV in, KB JSON out, loadable again.
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text('id,text\nx1,"Stuck-on brown papules, figure 2."\n'
                        'x2,The differential diagnosis of psoriasis includes lichen simplex.\n')
    out = tmp_path / "kb.json"
    grown = grow_kb_file(csv_path, out, client, kb)
    assert grown.stats["rules"] == 1
    reloaded = KnowledgeBase.from_file(out, tax, complete=False)
    assert len(reloaded.rules(tax.id("seborrheic keratosis"))) == len(before_sk) + 1


def test_read_passages_formats_and_errors(tmp_path):
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"id": "a", "caption": "Figure 1. A red plaque."}\n\n'
                  '{"text": "Differential diagnosis: tinea versus eczema."}\n'
                  '{"id": "c", "text": "x", "kind": "ddx"}\n')
    got = read_passages(jl)
    assert [(p.id, p.kind) for p in got] == [("a", "caption"), ("2", "ddx"), ("c", "ddx")]
    bad_json = tmp_path / "b.jsonl"
    bad_json.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(ExtractionError, match=r"b.jsonl line 2: invalid JSON"):
        read_passages(bad_json)
    no_text = tmp_path / "c.csv"
    no_text.write_text("id,body\n1,hello\n")
    with pytest.raises(ExtractionError, match=r"c.csv: CSV header needs"):
        read_passages(no_text)
    bad_kind = tmp_path / "d.csv"
    bad_kind.write_text("text,kind\nhello,poem\n")
    with pytest.raises(ExtractionError, match=r"d.csv row 2: kind 'poem'"):
        read_passages(bad_kind)
    with pytest.raises(ExtractionError, match="not found"):
        read_passages(tmp_path / "missing.csv")
    (tmp_path / "e.txt").write_text("x")
    with pytest.raises(ExtractionError, match="expected a .csv or .jsonl"):
        read_passages(tmp_path / "e.txt")


def test_answer_parsers_and_rule_check(tax):
    assert parse_rule_answer("Rule: NOT A RULE") is None
    assert parse_rule_answer("<Rule> A  red\nplaque indicates psoriasis. </Rule><Diagnosis>psoriasis.</Diagnosis>") == (
        "A red plaque indicates psoriasis.", "psoriasis")
    with pytest.raises(ValueError, match="lacks"):
        parse_rule_answer("psoriasis")
    assert parse_ddx_answer("NONE") == []
    assert parse_ddx_answer("<ddx>A: b (x); c</ddx>\n<ddx>D: e (y)</ddx>") == [
        ("A", [("b", "x"), ("c", "")]), ("D", [("e", "y")])]
    with pytest.raises(ValueError):
        parse_ddx_answer("<ddx>no colon here</ddx>")
    node, reason = check_rule("Scaly red plaques indicate psoriasis.", "Psoriasis", tax)
    assert node == tax.id("psoriasis") and reason is None
    assert "longer than" in check_rule("red " * 70, "psoriasis", tax)[1]
    assert "markup" in check_rule("<b>red</b> plaque", "psoriasis", tax)[1]

"""`python -m launch` as a user runs it (subprocesses from the repo root): config and command
errors, `convert` (with `--verify` against transformers) and `diagnose` on image files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def launch(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.run([sys.executable, "-m", "launch", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The failed run's one error line (stderr may carry logging before it)."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["--config.sft.nonexistent_key=1"], "nonexistent_key"),
    (["--config.seed=abc"], "config.seed"),
    (["--config=configs/no_such_config.py"], "no_such_config.py"),
    (["--config.rl.task=essay"], "rl.task"),
    (["--config.eval.max_new_tokens=0"], "eval.max_new_tokens"),
    (["--stages=generate,finetune"], "finetune"),
    (["--config.pretrain.keep=text"], "pretrain.keep"),
    (["frobnicate"], "frobnicate"),
    (["convert"], "--hf_dir"),
    (["convert", "--hf_dir=/nonexistent/hf"], "--out"),
    (["diagnose", "--checkpoint=/nonexistent/ckpt"], "--image"),
])
def test_bad_invocation_fails_with_one_line_naming_the_culprit(args, expected):
    assert expected in error_line(launch(*args))


# ---- a tiny model with an embedded tokenizer, as the stages save it -------------------------

@pytest.fixture(scope="module")
def tiny_parts():
    from skinr1_jax.model import tiny_config
    from skinr1_jax.model.tokenizer import build_embedded_tokenizer
    from skinr1_jax.taxonomy import load_default_taxonomy
    from skinr1_jax.trajectories.prompts import basic_prompt, ddx_prompt

    corpus = [basic_prompt(), ddx_prompt(), "You are a helpful assistant.", "system user assistant",
              *load_default_taxonomy().names] * 3
    tok = build_embedded_tokenizer(corpus, vocab_size=400)
    return tiny_config(vocab_size=tok.vocab_size, **tok.model_token_ids()), tok


@pytest.fixture(scope="module")
def saved_model(tiny_parts, tmp_path_factory):
    import jax

    from skinr1_jax.model import init_variables, unbox
    from skinr1_jax.model.saved import save_model

    cfg, tok = tiny_parts
    folder = tmp_path_factory.mktemp("saved") / "model"
    save_model(folder, cfg, jax.device_get(unbox(init_variables(cfg, jax.random.key(0)))), tok)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An RGB PNG, a greyscale JPEG of another size, and a truncated PNG."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    good = root / "lesion one.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(good)
    grey = root / "lesion-2.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 72), np.uint8)).save(grey)
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:100])
    return good, grey, corrupt


SECTION_KEYS = ("reasoning", "diagnosis", "taxonomy path", "malignancy", "differentials")


def test_diagnose_prints_a_section_per_image(saved_model, images):
    good, grey, _ = images
    result = launch("diagnose", f"--checkpoint={saved_model}", f"--image={good}", f"--image={grey}",
                    "--config.eval.max_new_tokens=8")
    assert result.returncode == 0, result.stderr
    sections = re.split(r"^=== ", result.stdout, flags=re.M)[1:]
    assert [s.splitlines()[0] for s in sections] == [f"image 1/2: {good}", f"image 2/2: {grey}"]
    for section in sections:
        keys = [ln.split(":", 1)[0] for ln in section.splitlines()[1:] if ln.strip()]
        assert keys[:len(SECTION_KEYS)] == list(SECTION_KEYS), section


def test_diagnose_bad_image_or_checkpoint_is_one_clear_error(saved_model, images, tmp_path):
    good, _, corrupt = images
    line = error_line(launch("diagnose", f"--checkpoint={saved_model}", f"--image={good}",
                             f"--image={corrupt}"))
    assert str(corrupt) in line and "decode" in line
    missing = tmp_path / "no_such_model"
    line = error_line(launch("diagnose", f"--checkpoint={missing}", f"--image={good}"))
    assert str(missing) in line and "does not exist" in line


# ---- reading an answer ---------------------------------------------------------------------

def test_read_answer_of_the_trained_format():
    from skinr1_jax.stages.diagnose import read_answer
    from skinr1_jax.taxonomy import UNKNOWN, load_default_taxonomy
    from skinr1_jax.trajectories.templates import diagnosis_text

    tax = load_default_taxonomy()
    dx, other = tax.id("dermatofibroma"), tax.id("melanoma")
    ancestors = [tax.name(i) for i in reversed(tax.path(dx)[:-1])]
    subgroup = ancestors[0]
    answer = (f"<thinking>A firm brown papule. Against melanoma, it lacks asymmetry; like other "
              f"{subgroup} lesions it dimples, so dermatofibroma.</thinking>"
              f"<diagnosis>{diagnosis_text('dermatofibroma', ancestors, tax.malignancy(dx))}</diagnosis>")
    r = read_answer(answer, tax)
    assert r.well_formed and r.diagnosis == "dermatofibroma" and r.node == dx
    assert r.malignancy == "benign"
    assert r.differentials == (other,)  # the subgroup and the diagnosis itself are not differentials
    assert r.thinking.startswith("A firm brown papule")

    garbage = read_answer("lorem <diagnosis>not a disease at all", tax)
    assert not garbage.well_formed and garbage.thinking is None
    assert garbage.diagnosis == "not a disease at all" and garbage.node == UNKNOWN
    assert garbage.malignancy is None and garbage.differentials == ()


def test_instruction_asks_for_the_richest_trained_reasoning():
    from ml_collections import ConfigDict

    from configs.default import get_config
    from skinr1_jax.stages.diagnose import instruction
    from skinr1_jax.trajectories.prompts import basic_prompt, ddx_prompt, walk_prompt

    gen = get_config().generate
    assert instruction(gen) == ddx_prompt(gen.think_tag, gen.diagnosis_tag)
    assert instruction(ConfigDict({**gen.to_dict(), "types": ("basic",)})) == basic_prompt()
    walk = ConfigDict({**gen.to_dict(), "types": ("basic", "ddx_keep", "hierarchy_walk")})
    assert instruction(walk) == walk_prompt()


# ---- convert ---------------------------------------------------------------------------------

def test_convert_verify_matches_transformers_and_writes_a_loadable_model(tiny_parts, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import jax

    from skinr1_jax.model.convert import write_random_hf_checkpoint
    from skinr1_jax.model.hf_io import load_hf
    from skinr1_jax.model.saved import load_model

    cfg, tok = tiny_parts
    hf_dir, out = tmp_path / "hf", tmp_path / "converted"
    write_random_hf_checkpoint(cfg, hf_dir, seed=3)
    line = error_line(launch("convert", f"--hf_dir={hf_dir}", f"--out={out}"))
    assert str(hf_dir) in line and "tokenizer" in line  # a model folder carries its tokenizer
    tok.save(hf_dir)

    result = launch("convert", f"--hf_dir={hf_dir}", f"--out={out}", "--verify")
    assert result.returncode == 0, result.stderr
    m = re.fullmatch(r"max_abs_logit_diff=(\S+)", result.stdout.strip().splitlines()[-1])
    assert m is not None, result.stdout
    assert 0.0 <= float(m.group(1)) <= 1e-4

    loaded_cfg, variables, loaded_tok = load_model(out)
    assert loaded_cfg == cfg and loaded_tok.vocab_size == tok.vocab_size
    _, reference = load_hf(hf_dir)
    jax.tree.map(np.testing.assert_array_equal, variables, reference)

"""Stage `rl`: hierarchical GRPO from the SFT model (G completions per question, rewards
computed on device), optionally jointly with SFT, writing models/sft_rl.

Questions come from the label-only `sparse_train` split: the paper's 4-option hierarchical
question (`rl.task = mcq`), the open-ended form with the taxonomy-distance reward (`open`), or
both (`mixed`, a stable per-example coin).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from skinr1_jax.stages import common

SAMPLE_LOG_EVERY = 10


def build_questions(config: ConfigDict, examples: list[dict], taxonomy) -> list:
    """The RL prompts: `rl.option_draws` 4-option questions per image (each draw its own options
    and letters) for `mcq`; one open-ended question per image for `open`; for `mixed`, per image
    a stable coin picks the form, repeated over the draws so that the mix stays even."""
    from skinr1_jax.data import tasks

    fmt = tasks.TaskFormat(think_tag=config.generate.think_tag, final_tag=config.generate.final_tag,
                           malignancy_classes=tasks.malignancy_classes_of(examples))
    if config.rl.task == "open":
        return list(tasks.open_set(examples, taxonomy, fmt=fmt).questions)
    # With one draw the default's 160 x 16 prompts revisit each of its 576 images' one question
    # ~4 times, so the policy could learn an image's letter instead of reading the options;
    # more draws rule that out (as SFT's generate.question_variants). On seed 42, 4 draws did
    # not help (README "Results on the embedded default"), so the default keeps 1.
    draws = [tasks.mcq_questions(examples, taxonomy, seed=tasks.draw_seed(config.seed, d), fmt=fmt)
             for d in range(int(config.rl.option_draws))]
    if config.rl.task == "mcq":
        return [q for mcq in draws for q in mcq]
    open_qs = tasks.open_set(examples, taxonomy, fmt=fmt).questions
    coin = [tasks.example_rng(config.seed, str(e["id"]), "rl_task").random() < 0.5 for e in examples]
    return [o if c else m for mcq in draws for m, o, c in zip(mcq, open_qs, coin)]


class RolloutSource:
    """The rollout side of RL, between the mesh (the learner's state, already in its
    shardings) and the learner (the jitted step). Each step, every process samples G
    completions of its block of the global prompt batch with the current policy in place on
    the mesh, parses its own completions into reward inputs, and the GRPO batch is assembled
    on the mesh (`rollout.GRPOBatch`), with the reference log-probs computed there; plus an SFT
    batch when the objective is joint. Nothing of the policy is copied to the host: only each
    process's completions come back (`host_bytes`)."""

    def __init__(self, config: ConfigDict, workdir: Path, *, model_cfg: Any, tokenizer: Any,
                 enc: Any, mesh: Any, ref_variables: Any, logprob_fn: Any, sft_source: Any = None):
        from skinr1_jax.data import tasks
        from skinr1_jax.data.pipeline import BatchIterator, collate_prompts
        from skinr1_jax.rollout import make_sampler
        from skinr1_jax.train.distributed import data_shard
        from skinr1_jax.train.rewards import ResponseParser

        self.config, self.model_cfg, self.tokenizer, self.mesh = config, model_cfg, tokenizer, mesh
        self.ref_variables, self.logprob_fn, self.sft_source = ref_variables, logprob_fn, sft_source
        self.taxonomy, _ = common.taxonomy_and_kb()
        sparse = common.dataset_splits(config, workdir)["sparse_train"]
        images = {str(e["id"]): e["image"] for e in sparse}
        self.questions = build_questions(config, sparse, self.taxonomy)
        # question_index: which question a prompt row asks (the lookup reward reads its options).
        encoded = [{**enc.question(q, images[q.example_id]), "question_index": np.int32(i)}
                   for i, q in enumerate(self.questions)]
        self.prompt_len = max(len(e["input_ids"]) for e in encoded)
        shard, shards = data_shard()
        self.iterator = BatchIterator(
            encoded, int(config.rl.batch_size), config.seed, shard_index=shard,
            shard_count=shards, encode_fn=lambda e: e,
            collate_fn=lambda rows: collate_prompts(rows, self.prompt_len, tokenizer.pad_id,
                                                    batch_size=self.iterator.rows))
        self.first_group = shard * self.iterator.rows
        self.sampler = make_sampler(model_cfg, tokenizer, mesh)
        self.grid = common.image_grid(encoded[0])
        # rl.mu > 1: each rollout batch serves mu consecutive updates (the step clips the ratio
        # against its sampled log-probs); this holds the batch of the current cycle.
        self.mu = int(config.rl.mu)
        self._rollout: tuple[dict, dict] | None = None
        # Read back only the malignancy classes the prompts offer (as build_questions words them).
        self.parser = ResponseParser(think_tag=config.generate.think_tag,
                                     final_tag=config.generate.final_tag,
                                     malignancy_classes=tasks.malignancy_classes_of(sparse))
        self.samples_path = workdir / "rl_samples.jsonl"
        self.host_bytes = 0            # bytes read back from devices by the last step

    def example_batch(self) -> dict:
        """This process's block of a batch of the right structure (no sampling): the loop
        takes the step's input shardings from its global shapes."""
        state = self.iterator.get_state()
        prompts = next(self.iterator)
        self.iterator.restore(state)
        g, t = int(self.config.rl.num_generations), int(self.config.rl.max_new_tokens)
        rows = prompts["input_ids"].shape[0] * g
        fake = np.full((rows, t), self.tokenizer.pad_id, np.int32)
        batch = self._host_batch(prompts, fake, np.zeros((rows, t), np.float32),
                                 np.ones(rows, np.int32), [""] * rows)
        if float(self.config.rl.beta) != 0:
            batch["ref_logprobs"] = np.zeros(batch["input_ids"].shape, np.float32)
        return batch

    def batches(self, state, step: int):
        sft_batch = self.sft_source.next() if self.sft_source is not None else None
        if self.mu > 1 and step % self.mu and self._rollout is not None:
            # Inner update k of mu: same rollouts, rewards and sampled log-probs. (A run resumed
            # mid-cycle has no cached batch and starts its cycle with fresh rollouts.)
            rl_batch, extra = self._rollout
            return sft_batch, rl_batch, extra
        rl_batch, extra = self._rollout_batch(state, step)
        self._rollout = (rl_batch, extra) if self.mu > 1 else None
        return sft_batch, rl_batch, extra

    def _rollout_batch(self, state, step: int) -> tuple[dict, dict]:
        from skinr1_jax.rollout import sample_batch
        from skinr1_jax.train import sharding

        prompts = next(self.iterator)
        rng = jax.random.fold_in(jax.random.key(self.config.seed + 1), step)
        before = self.sampler.host_bytes
        rollout = sample_batch(self.sampler, state.variables, self.tokenizer, prompts,
                               num_samples=int(self.config.rl.num_generations),
                               temperature=float(self.config.rl.temperature),
                               top_k=int(self.config.rl.top_k), top_p=float(self.config.rl.top_p),
                               max_new_tokens=int(self.config.rl.max_new_tokens), rng=rng)
        rl_batch = sharding.shard_batch(
            self._host_batch(prompts, rollout.tokens, rollout.logprobs, rollout.lengths,
                             rollout.texts), self.mesh)
        if self.mu > 1:
            # The sampled tokens' log-probs under the sampling policy, from the step's own forward
            # (as TRL does for num_iterations > 1): the sampler's differ slightly (it renormalises
            # over the ids it suppresses), and the first update's ratio must be exactly 1.
            rl_batch["old_logprobs"] = self.logprob_fn(state.variables, rl_batch)
        if float(self.config.rl.beta) != 0:
            rl_batch["ref_logprobs"] = self.logprob_fn(self.ref_variables, rl_batch)
        if step % SAMPLE_LOG_EVERY == 0:
            self._log_samples(step, prompts, rollout.texts)
        extra = _global_means(rl_batch["format_ok"], rl_batch["completion_mask"])
        self.host_bytes = self.sampler.host_bytes - before + 8   # + the two scalars above
        return rl_batch, extra

    def _host_batch(self, prompts: Mapping[str, Any], tokens: np.ndarray, logprobs: np.ndarray,
                    lengths: np.ndarray, texts: list[str]) -> dict:
        from skinr1_jax.eval.evaluate import answer_node
        from skinr1_jax.eval.option_check import check_scores
        from skinr1_jax.rollout import grpo_batch

        is_open = self.config.rl.task != "mcq"
        resolver = (lambda final: answer_node(final, self.taxonomy)) if is_open else None
        parsed = self.parser(texts, resolver)
        if float(self.config.rl.reward.check_weight):
            g = int(self.config.rl.num_generations)
            asked = [self.questions[int(i)] for i in np.repeat(prompts["question_index"], g)]
            parsed["check_score"] = check_scores(asked, parsed["option"], texts)
        return grpo_batch(prompts, tokens, logprobs, lengths, parsed,
                          num_generations=int(self.config.rl.num_generations),
                          first_group=self.first_group, open_ended=is_open).arrays()

    def _log_samples(self, step: int, prompts: Mapping[str, Any], texts: list[str]) -> None:
        from skinr1_jax.train.distributed import is_main_process

        if not is_main_process():      # process 0's first prompts stand for the step
            return
        g = int(self.config.rl.num_generations)
        rows = [{"step": step, "example_id": prompts["example_ids"][i // g], "completion": texts[i]}
                for i in range(0, min(len(texts), 2 * g))]
        with open(self.samples_path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def get_state(self) -> dict[str, int]:
        out = {f"rl_{k}": int(v) for k, v in self.iterator.get_state().items()}
        if self.sft_source is not None:
            out.update(self.sft_source.get_state())
        return out

    def restore(self, data_state: Mapping[str, int]) -> None:
        self.iterator.restore({k[3:]: v for k, v in data_state.items() if k.startswith("rl_")})
        if self.sft_source is not None:
            self.sft_source.restore(data_state)


@jax.jit
def _means(format_ok: jax.Array, completion_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    return (jnp.mean(format_ok.astype(jnp.float32)),
            jnp.mean(jnp.sum(completion_mask, axis=1).astype(jnp.float32)))


def _global_means(format_ok: jax.Array, completion_mask: jax.Array) -> dict[str, float]:
    """Format rate and mean completion length over the global batch (every process's rows)."""
    fmt, length = _means(format_ok, completion_mask)
    return {"format_rate": float(fmt), "mean_length": float(length)}


def initial_policy(config: ConfigDict, workdir: Path, model_cfg: Any, tokenizer: Any) -> Any:
    from skinr1_jax.model.saved import load_model
    from skinr1_jax.stages.loop import restore_variables

    if config.rl.init_from == "base":
        return common.base_variables(config, workdir, model_cfg, tokenizer)
    sft_dir = common.models_dir(workdir) / "sft"
    if not (sft_dir / "model_config.json").exists():
        raise FileNotFoundError(f"{sft_dir} not found: run the sft stage first "
                                "(or set --config.rl.init_from=base)")
    variables = load_model(sft_dir)[1]
    if int(config.rl.init_sft_step) > 0:
        variables = restore_variables(config, workdir, "sft", int(config.rl.init_sft_step),
                                      model_cfg=model_cfg, variables=variables)
    return variables


def run(config: ConfigDict, workdir: Path) -> dict:
    from skinr1_jax.model import abstract_variables
    from skinr1_jax.model.saved import save_model
    from skinr1_jax.stages.loop import apply_fn_for, train
    from skinr1_jax.stages.sft import sft_source as make_sft_source
    from skinr1_jax.train import sharding
    from skinr1_jax.train.rewards import credit_matrix
    from skinr1_jax.train.step import StepConfig, make_logprob_fn

    tokenizer = common.load_tokenizer(config, workdir)
    model_cfg = common.model_config(config, tokenizer)
    policy = initial_policy(config, workdir, model_cfg, tokenizer)
    out = common.models_dir(workdir) / "sft_rl"
    if config.rl.steps == 0:
        print("[rl] rl.steps = 0: models/sft_rl is the starting policy")
        save_model(out, model_cfg, policy, tokenizer)
        return {"steps": 0}
    enc = common.encoder(config, tokenizer, model_cfg)
    mesh = sharding.make_mesh(config.mesh)
    var_shardings = sharding.param_shardings(abstract_variables(model_cfg), mesh)
    step_cfg = StepConfig.from_config(config, "rl")
    sft_source = (make_sft_source(config, workdir, enc, tokenizer, seed_offset=1, bucketed=False)
                  if step_cfg.sft else None)
    # The frozen reference is the starting policy (the SFT model), as in the paper; beta = 0
    # skips it and its forward pass.
    ref_variables = (jax.device_put(policy, var_shardings) if float(config.rl.beta) != 0
                     else None)
    source = RolloutSource(config, workdir, model_cfg=model_cfg, tokenizer=tokenizer, enc=enc,
                           mesh=mesh, ref_variables=ref_variables, logprob_fn=None,
                           sft_source=sft_source)
    grid = source.grid
    if ref_variables is not None or int(config.rl.mu) > 1:      # ref_logprobs, old_logprobs
        source.logprob_fn = make_logprob_fn(apply_fn_for(model_cfg, grid),
                                            float(config.rl.temperature), mesh, var_shardings,
                                            groups=step_cfg.num_generations)
    credit = None
    if config.rl.task != "mcq":
        taxonomy, _ = common.taxonomy_and_kb()
        credit = credit_matrix(config.rl.reward.distance_mode, distance=taxonomy.distance_matrix(),
                               shared_depth=taxonomy.shared_depth_matrix(),
                               decay=float(config.rl.reward.distance_decay))
    print(f"[rl] {len(source.questions)} questions ({config.rl.task}), {config.rl.steps} steps "
          f"x {config.rl.batch_size} prompts x G={config.rl.num_generations}, prompt length "
          f"{source.prompt_len}, up to {config.rl.max_new_tokens} new tokens")
    sft_example = sft_source.example() if sft_source is not None else None
    result = train("rl", config, workdir, model_cfg=model_cfg, variables=policy, grid=grid,
                   source=source, step_cfg=step_cfg, steps=int(config.rl.steps),
                   learning_rate=float(config.rl.learning_rate),
                   warmup_ratio=float(config.rl.warmup_ratio),
                   example_batches=(sft_example, source.example_batch()), credit=credit)
    save_model(out, model_cfg, result.variables, tokenizer)
    print(f"[rl] done in {result.seconds:.0f}s; reward "
          f"{result.last_metrics.get('reward/total', float('nan')):.3f} -> {out}")
    return {"steps": result.steps, "seconds": result.seconds, **result.last_metrics}

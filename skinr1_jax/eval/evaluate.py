"""Evaluate one model on the paper's question sets and the open-ended form.

Option sets (accuracy of the parsed option letter, greedy decoding): `indomain` (the 4-option
hierarchical question; correct = the 0.75 option), `b_or_m`, `hierarchical`, `ddx`, and `ood`
(the 4-option question on the out-of-distribution split). Open-ended (`open`, `ood_open`):
the named disease is resolved through the taxonomy and scored at every tree level.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from skinr1_jax.data import tasks
from skinr1_jax.eval import metrics
from skinr1_jax.eval.option_check import option_check_rates
from skinr1_jax.rollout import Encoder, greedy_texts, make_sampler
from skinr1_jax.taxonomy import UNKNOWN, Taxonomy
from skinr1_jax.train.rewards import ResponseParser, credit_matrix
from skinr1_jax.trajectories.rephrase import mentioned_nodes

log = logging.getLogger(__name__)

# result key -> (question kind, split)
OPTION_SETS = {"indomain": ("mcq_indomain", "indomain", "test"),
               "b_or_m": ("mcq_b_or_m", "b_or_m", "test"),
               "hierarchical": ("mcq_hierarchical", "hierarchical", "test"),
               "ddx": ("mcq_ddx", "ddx", "test"),
               "ood": ("ood", "indomain", "ood_test")}
OPEN_SETS = {"open": "test", "ood_open": "ood_test"}
# open-ended metrics that are shares of questions (and so get a 95% interval)
ACCURACY_KEYS = ("acc_level1", "acc_level2", "acc_leaf", "format_rate")


def answer_node(final: str | None, taxonomy: Taxonomy) -> int:
    """The disease named first in an open-ended final field (`name, malignancy`)."""
    if final is None:
        return UNKNOWN
    name = final.strip().split(",")[0].split(".")[0]
    return int(taxonomy.resolve(name))


def _limit(examples: Sequence[Mapping[str, Any]], n: int) -> list:
    """At most n examples, evenly spaced: splits are stored class by class, so a prefix
    would hold one class."""
    if n <= 0 or n >= len(examples):
        return list(examples)
    return [examples[int(i)] for i in np.linspace(0, len(examples) - 1, n).round()]


class Evaluator:
    """Builds every question set once; `evaluate(variables)` scores one set of parameters."""

    def __init__(self, config: Any, model_cfg: Any, tokenizer: Any, encoder: Encoder,
                 splits: Mapping[str, list], taxonomy: Taxonomy, ddx_graph: Any):
        from skinr1_jax.train.sharding import make_mesh

        self.config, self.model_cfg, self.tokenizer = config, model_cfg, tokenizer
        self.taxonomy = taxonomy
        # Greedy rollouts run on the run's mesh, each process sampling its block of prompts.
        self.mesh = make_mesh(config.mesh)
        self.sampler = make_sampler(model_cfg, tokenizer, self.mesh)
        self.tags = dict(think_tag=config.generate.think_tag, final_tag=config.generate.final_tag)
        self.images = {str(e["id"]): e["image"] for split in splits.values() for e in split}
        self.examples = {str(e["id"]): e for split in splits.values() for e in split}
        self.sets: dict[str, tuple[str, list, list[dict]]] = {}
        for name in config.eval.sets:
            if name in OPTION_SETS:
                _, kind, split = OPTION_SETS[name]
                pool = _limit(splits[split], config.eval.max_examples)
                qs = tasks.build_eval_set(kind, pool, taxonomy, seed=config.seed,
                                          ddx_graph=ddx_graph, **self.tags).questions
            elif name in OPEN_SETS:
                pool = _limit(splits[OPEN_SETS[name]], config.eval.max_examples)
                qs = tasks.build_eval_set("open", pool, taxonomy, seed=config.seed,
                                          **self.tags).questions
            else:
                raise ValueError(f"config key 'eval.sets' has unknown set {name!r}; known: "
                                 f"{', '.join([*OPTION_SETS, *OPEN_SETS])}")
            encoded = [encoder.question(q, self.images[q.example_id]) for q in qs]
            self.sets[name] = (name, list(qs), encoded)
        self.credit = credit_matrix(config.rl.reward.distance_mode,
                                    distance=taxonomy.distance_matrix(),
                                    shared_depth=taxonomy.shared_depth_matrix(),
                                    decay=config.rl.reward.distance_decay)

    def _generate(self, variables: Any, encoded: list[dict]) -> list[str]:
        if not encoded:
            return []
        return greedy_texts(self.sampler, variables, self.tokenizer, encoded,
                            batch_size=self.config.eval.batch_size,
                            max_len=self.config.data.max_seq_len,
                            max_new_tokens=self.config.eval.max_new_tokens)

    def evaluate(self, variables: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """(results, extras): results has the README's metric names; extras keeps the raw
        predictions of the open-ended test set for plots and the confusion view."""
        from skinr1_jax.model import abstract_variables
        from skinr1_jax.train.sharding import place_variables

        variables = place_variables(variables, abstract_variables(self.model_cfg), self.mesh)
        results: dict[str, Any] = {"details": {}}
        extras: dict[str, Any] = {}
        for name, (_, questions, encoded) in self.sets.items():
            texts = self._generate(variables, encoded)
            if name in OPTION_SETS:
                key = OPTION_SETS[name][0]
                acc, fmt, preds = self._option_scores(questions, texts)
                results[key] = acc
                results["details"][key] = {"n": len(questions), "format_rate": fmt,
                                           "ci95": metrics.wilson_interval(acc, len(questions))}
                if (self.config.generate.option_check
                        and all(tasks.options_are_nodes(q) for q in questions)):
                    results["details"][key]["option_check"] = option_check_rates(
                        questions, preds, texts, self.taxonomy)
            else:
                scores, preds = self._open_scores(questions, texts)
                prefix = "" if name == "open" else f"{name}."
                results["details"].update({
                    prefix + k: {"n": len(questions),
                                 "ci95": metrics.wilson_interval(scores[k], len(questions))}
                    for k in ACCURACY_KEYS if k in scores})
                if name == "open":
                    results.update(scores)
                    extras["open"] = preds
                else:
                    results[name] = scores
            log.info("eval %s: %d questions", name, len(questions))
        return results, extras

    def _option_scores(self, questions: list, texts: list[str]
                       ) -> tuple[float, float, list[int]]:
        """(accuracy, format rate, each answer's option index or -1)."""
        if not questions:
            return float("nan"), float("nan"), []
        preds, fmt = [], []
        for q, text in zip(questions, texts):
            parser = ResponseParser(num_options=len(q.options), **self.tags)
            preds.append(parser.option(parser.final_field(text)))
            fmt.append(parser.format_ok(text))
        answers = [q.answer for q in questions]
        return metrics.option_accuracy(preds, answers), float(np.mean(fmt)), preds

    def _open_scores(self, questions: list, texts: list[str]) -> tuple[dict, dict]:
        if not questions:
            return {}, {}
        parsed = ResponseParser(**self.tags)(texts, lambda f: answer_node(f, self.taxonomy))
        pred = parsed["node_pred"].astype(np.int64)
        truth = np.array([q.node for q in questions], np.int64)
        fmt = parsed["format_ok"].astype(bool)
        diffs = [sorted(n for n in mentioned_nodes(t, self.taxonomy) if n >= 0) for t in texts]
        skin = np.array([int(self.examples[q.example_id].get("skin_type", -1)) for q in questions])
        scores = metrics.open_ended_metrics(self.taxonomy, pred, truth, format_ok=fmt,
                                            differentials=diffs, skin_types=skin)
        known = pred != UNKNOWN
        credit = np.where(known, self.credit[truth, np.where(known, pred, 0)], 0.0)
        scores["mean_taxonomy_reward"] = float(credit.mean())
        return scores, {"pred": pred, "truth": truth, "texts": texts}

"""A miniature of the default run for the end-to-end test: every stage, tiny sizes, few steps."""

from ml_collections import ConfigDict

from configs import default


def get_config() -> ConfigDict:
    c = default.get_config()
    c.workdir = "workdir/ci"
    c.data.dense_per_class = 3
    c.data.sparse_per_class = 4
    c.data.val_per_class = 1
    c.data.test_per_class = 2
    c.data.ood_per_class = 1
    c.generate.per_diagnosis_per_type = 2
    c.pretrain.steps = 2
    c.pretrain.batch_size = 4
    c.sft.steps = 4
    c.sft.batch_size = 4
    c.rl.steps = 2
    c.rl.batch_size = 2
    c.rl.max_new_tokens = 16
    c.eval.max_new_tokens = 16
    c.eval.max_examples = 8
    c.eval.batch_size = 8
    c.checkpoint.every_steps = 2
    c.log.every_steps = 1
    return c

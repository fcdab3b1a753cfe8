"""Training core: mesh sharding, optimizer, SFT loss, rewards, GRPO, the joint jitted step,
orbax checkpoints, metrics logging and multi-process start-up.

Modules: sharding, optim, state, losses, rewards, grpo, step, checkpoint, logging,
distributed; toy (a tiny stand-in LM for tests). See docs/architecture.md (train).
"""

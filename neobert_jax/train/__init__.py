"""Sharded MLM pretraining: `neobert_jax.train.loop.train(config)`, or scripts/pretrain.py.

config (schema + checks) -> run_setup (tokenizer, data, model_init, sharding, state, optim,
checkpoint) -> loop (step, reporting, signals, throughput) -> HF export.
"""

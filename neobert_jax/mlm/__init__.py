"""MLM pretraining: `neobert_jax.mlm.task.train(config)`, or scripts/pretrain.py.

setup (tokenizer, data, model, state, checkpoints) -> task (MlmTask on the shared runner) ->
step (the compiled train and eval steps) -> HF export.
"""

"""Contrastive fine-tuning of a pretrained encoder into a sentence embedder.

    from neobert_jax.contrastive.task import train_contrastive    # or scripts/contrastive.py
    result = train_contrastive(config)    # config: configs/contrastive.py (contrastive_config())

config -> setup (model + tokenizer from init_from; columns -> tokenized -> batching; the runtime's
mesh, state, optimizer, checkpoints) -> task (ContrastiveTask on the shared runner; step: pooling +
losses over the global batch; embedder + evaluation before/after) -> output_dir/st
(neobert_jax.hf.sentence_transformers).
Bad input raises neobert_jax.data.DataError naming file, line and column.
"""

"""Data pipeline: local corpora -> tokenizer -> packed, masked MLM batches (docs/contracts.md).

    cfg = config.data                                  # fields and defaults: default_data_config()
    tokenizer = get_tokenizer(cfg.tokenizer or cfg.preprocessed_dir or None, cfg.train_files, output_dir,
                              cfg.tokenizer_vocab_size, text_field=cfg.text_field,
                              skip_bad_records=cfg.skip_bad_records)
    train = build_mlm_iterator(cfg, tokenizer=tokenizer, seq_len=512, batch_size=rows_per_process, seed=0,
                               process_index=i, process_count=n, num_epochs=None)
    train.steps_per_epoch, train.stats, train.get_state(), train.set_state(state), next(train)
    evals = build_mlm_iterator(cfg, tokenizer=tokenizer, seq_len=512, batch_size=rows_per_process,
                               split="eval", process_index=i, process_count=n)   # one pass

save_tokenizer(tokenizer, dir) writes a folder that transformers 4.x and 5.x both load (5.x's own
save_pretrained names a tokenizer class 4.x does not know).
Bad input raises DataError with a one-line message; scripts exit with `error: <message>`.
"""

from neobert_jax.data.errors import DataError
from neobert_jax.data.masking import IGNORE_INDEX, max_predictions
from neobert_jax.data.pipeline import DataStats, MlmIterator, build_mlm_iterator, default_data_config, packed_rows
from neobert_jax.data.tokenizer import get_tokenizer, load_tokenizer, save_tokenizer

__all__ = [
    "DataError",
    "DataStats",
    "IGNORE_INDEX",
    "MlmIterator",
    "build_mlm_iterator",
    "default_data_config",
    "get_tokenizer",
    "load_tokenizer",
    "max_predictions",
    "packed_rows",
    "save_tokenizer",
]

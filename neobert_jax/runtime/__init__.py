"""What every training task shares: the runner (the loop), mesh and sharding, state, optimizer,
checkpoints, signals, multi-host start-up, reporting, the command line and the config schema.
The tasks (neobert_jax.mlm, neobert_jax.contrastive) plug into `runner.run_task`."""

"""What a run executes: pipeline, base LightningModule, data sampling, callbacks, checkpoints,
shards, schedules, metrics, the typed config schemas, composing ``configs/`` outside
``@hydra.main`` (a run rebuilt from its checkpoint composes one) and results.json writing.

Imports neither ``tasks.common.reporting`` nor ``tasks.common.launch``."""

"""What a run executes: pipeline, base LightningModule, data sampling, callbacks, checkpoints,
shards, schedules, metrics, the typed config schemas and results.json writing.

Imports neither ``tasks.common.reporting`` nor ``tasks.common.launch``."""

"""Code every task shares, split by concern.

* ``runtime``: what a training / evaluation run executes (pipeline, base LightningModule, data
  sampling, callbacks, checkpoints, shards, schedules, metrics, results.json writing).
* ``reporting``: what turns finished runs into the paper's tables, figures, compute profiles and
  W&B dashboards.
* ``launch``: how runs are started (Hydra launchers and callbacks, composing configs outside
  ``@hydra.main``).

Dependencies point one way: ``launch`` and ``reporting`` may import ``runtime``; ``runtime``
imports neither (tests/common/test_layering.py).
"""

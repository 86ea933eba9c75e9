"""Evaluate a checkpoint.

python eval.py ckpt_path=<file.ckpt> [split=test] [overrides]

The checkpoint's task, model, mask, attention and data settings are restored from the config it
carries (``tasks.common.runtime.checkpoints.with_checkpoint_config``) before Hydra composes
the config; overrides on the command line win (another model than the checkpoint's stops with
the differing keys, or is evaluated with ``allow_config_mismatch=true`` and recorded).
"""

import sys

import hydra
from omegaconf import DictConfig

from tasks.common.runtime.checkpoints import with_checkpoint_config
from tasks.common.runtime.pipeline import evaluate, run_job
from tasks.common.runtime.schemas import register_schemas

register_schemas()


@hydra.main(version_base="1.3", config_path="configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg, evaluate)


if __name__ == "__main__":
    sys.argv[1:] = with_checkpoint_config(sys.argv[1:], "eval")
    main()

"""Evaluate a checkpoint.

python eval.py task=<task> mask=<mask> ckpt_path=<file.ckpt> [split=test]
"""

import hydra
from omegaconf import DictConfig

from tasks.common.runtime.pipeline import evaluate, run_job
from tasks.common.runtime.schemas import register_schemas

register_schemas()


@hydra.main(version_base="1.3", config_path="configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg, evaluate)


if __name__ == "__main__":
    main()

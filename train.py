"""Train a task: python train.py task=<demo|qvhighlights|mad_ad|imagenet|msrvtt> mask=<...>"""

import hydra
from omegaconf import DictConfig

from tasks.common.runtime.pipeline import run_job, train
from tasks.common.runtime.schemas import register_schemas

register_schemas()


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg, train)


if __name__ == "__main__":
    main()

"""Predict one input with a trained checkpoint.

python predict.py ckpt_path=<file.ckpt> input.<key>=... [device=cuda] [plot=false]

QVHighlights: input.video_features=[<dir>/slowfast_features/<vid>.npz,<dir>/clip_features/<vid>.npz]
input.query_features=<dir>/clip_text_features/qid<qid>.npz [input.query='<text>'] -> ranked
windows [start, end, score] in seconds and per-clip saliency. ImageNet: input.image=<file> -> top
classes. MSR-VTT: input.video=<file> -> a caption. Writes <run dir>/prediction.json and the
STAMP mask of the input as <run dir>/mask.png. The model is rebuilt from the checkpoint alone
(as eval.py); see tasks/common/launch/predict.py for the Python API.
"""

import sys

import hydra
from omegaconf import DictConfig

from tasks.common.launch.predict import predict
from tasks.common.runtime.checkpoints import with_checkpoint_config
from tasks.common.runtime.pipeline import run_dir
from tasks.common.runtime.schemas import register_schemas

register_schemas()


@hydra.main(version_base="1.3", config_path="configs", config_name="predict.yaml")
def main(cfg: DictConfig) -> None:
    predict(cfg, run_dir())


if __name__ == "__main__":
    sys.argv[1:] = with_checkpoint_config(sys.argv[1:], "predict")
    main()

"""Register the core's typed settings as Hydra structured-config schemas, and the ``stamp_root``
resolver of ``configs/paths/default.yaml``.

``configs/mask/*.yaml`` and ``configs/attention/*.yaml`` start from these schemas, so an invalid
choice (``mask.fusion=foo``) fails while the config is composed, with the valid values listed.
"""

import os
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from stamp.config import AttentionConfig, MaskConfig

REPO_DIR = Path(__file__).resolve().parents[2]
_registered = False


def register_schemas() -> None:
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    cs.store(group="mask", name="mask_schema", node=MaskConfig)
    cs.store(group="attention", name="attention_schema", node=AttentionConfig)
    # ``paths.root_dir`` must resolve before Hydra's runtime exists: the multirun launcher resolves
    # ``hydra.sweep.dir`` (which uses it) before it sets HydraConfig, so ``${hydra:runtime.cwd}``
    # fails there. $STAMP_ROOT, else the directory the command was started in.
    OmegaConf.register_new_resolver(
        "stamp_root", lambda: os.environ.get("STAMP_ROOT") or os.getcwd(), replace=True
    )
    # the repository (files shipped with the code, e.g. the QVHighlights annotations)
    OmegaConf.register_new_resolver("stamp_repo", lambda: str(REPO_DIR), replace=True)
    _registered = True

"""Register the core's typed settings as Hydra structured-config schemas.

``configs/mask/*.yaml`` and ``configs/attention/*.yaml`` start from these schemas, so an invalid
choice (``mask.fusion=foo``) fails while the config is composed, with the valid values listed.
"""

from hydra.core.config_store import ConfigStore

from stamp.config import AttentionConfig, MaskConfig

_registered = False


def register_schemas() -> None:
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    cs.store(group="mask", name="mask_schema", node=MaskConfig)
    cs.store(group="attention", name="attention_schema", node=AttentionConfig)
    _registered = True

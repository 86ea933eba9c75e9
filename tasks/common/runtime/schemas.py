"""Register the core's typed settings as Hydra structured-config schemas, and the ``stamp_root``
resolver of ``configs/paths/default.yaml``.

``configs/mask/*.yaml`` and ``configs/attention/*.yaml`` start from these schemas, so an invalid
choice (``mask.fusion=foo``) fails while the config is composed, with the valid values listed.
"""

import dataclasses
import logging
import os
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from stamp.config import AttentionConfig, MaskConfig

REPO_DIR = Path(__file__).resolve().parents[3]
_registered = False
_warned_dry_run: set = set()


def device_count(devices: object) -> int:
    """Lightning's ``trainer.devices`` as a number (-1 / "auto": the visible CUDA devices; 1
    where none is visible, so that a GPU config resolves anywhere)."""
    if isinstance(devices, str) and devices.strip() not in ("-1", "auto"):
        parts = [d for d in devices.split(",") if d.strip()]
        return int(parts[0]) if len(parts) == 1 and "," not in devices else len(parts)
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    import torch

    count = torch.cuda.device_count()
    if count < 1:
        # a dry run (``--cfg job --resolve``) of a GPU config on a machine without GPUs: count
        # one; training stops at start-up (tasks.common.runtime.pipeline.check_device_and_precision)
        if devices in _warned_dry_run:
            return 1
        _warned_dry_run.add(devices)
        logging.getLogger(__name__).warning(
            "trainer.devices=%r: no visible GPU here, counted as 1 device to resolve the "
            "config; training needs GPUs (or trainer.devices=<number>)",
            devices,
        )
        return 1
    return count


def effective_accumulation(
    effective: int | None, per_device: int, devices: object, num_nodes: int = 1
) -> int:
    """``trainer.accumulate_grad_batches`` that makes per-device batch x devices x nodes x
    accumulation equal ``effective`` (None: 1, no target); an error if it does not divide."""
    if effective is None:
        return 1
    per_step = int(per_device) * device_count(devices) * int(num_nodes)
    if per_step < 1 or effective % per_step:
        raise ValueError(
            f"effective batch {effective} is not a multiple of per-device batch {per_device} x "
            f"{device_count(devices)} devices x {num_nodes} nodes = {per_step}; change "
            "data.batch_size or the device count"
        )
    return effective // per_step


def register_schemas() -> None:
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    # at the root, not in the groups: ``--help`` lists a group's configs as its choices, and
    # ``mask=mask_schema`` is no mask; configs/mask/*.yaml extend it with ``/mask_schema@_here_``
    cs.store(name="mask_schema", node=MaskConfig)
    cs.store(name="attention_schema", node=AttentionConfig)
    # ``paths.root_dir`` must resolve before Hydra's runtime exists: the multirun launcher resolves
    # ``hydra.sweep.dir`` (which uses it) before it sets HydraConfig, so ``${hydra:runtime.cwd}``
    # fails there. $STAMP_ROOT, else the directory the command was started in.
    OmegaConf.register_new_resolver(
        "stamp_root", lambda: os.environ.get("STAMP_ROOT") or os.getcwd(), replace=True
    )
    # the repository (files shipped with the code, e.g. the QVHighlights annotations)
    OmegaConf.register_new_resolver("stamp_repo", lambda: str(REPO_DIR), replace=True)
    # effective batch on any device count (MAD-AD: 256)
    OmegaConf.register_new_resolver("device_count", device_count, replace=True)
    OmegaConf.register_new_resolver("effective_accumulation", effective_accumulation, replace=True)
    _registered = True


def check_known_keys(node: object, schema: type, prefix: str) -> None:
    """Refuse settings the typed schema does not have. Hydra's ``+mask.foo=1`` adds a key even
    to a structured config, and ``OmegaConf.to_object`` then drops it silently: the run would
    go on without the setting the user asked for.

    Raises:
        ValueError: naming each unknown key and listing the valid ones.
    """
    known = {f.name for f in dataclasses.fields(schema)}
    unknown = [str(k) for k in (node or {}) if str(k) not in known]  # type: ignore[union-attr]
    if unknown:
        raise ValueError(
            f"unknown setting{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(f'{prefix}.{k}' for k in unknown)}: {schema.__name__} has "
            f"{', '.join(sorted(known))}"
        )

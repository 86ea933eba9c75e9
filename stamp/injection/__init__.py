"""STAMP in an existing model: ``stamp.inject`` and its adapter-style helpers.

The package is called ``injection`` (not ``inject``) so that ``stamp.inject`` stays the function.
"""

from stamp.injection.adapter import InjectedStamp
from stamp.injection.api import (
    attention_modules,
    inject,
    injected_modules,
    mark_only_stamp_trainable,
    stamp_state_dict,
)
from stamp.injection.lifecycle import load, push_to_hub, save, unload

__all__ = [
    "InjectedStamp",
    "attention_modules",
    "inject",
    "injected_modules",
    "load",
    "mark_only_stamp_trainable",
    "push_to_hub",
    "save",
    "stamp_state_dict",
    "unload",
]

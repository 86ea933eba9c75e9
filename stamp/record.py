"""Collect attention probabilities and masks from every STAMP attention module of a model.

    with record_attention(model) as records:
        model(batch)
    records[0]["attn"]  # (B, H, Nq, Nk) probabilities of the first attention module called

Recording routes the recorded modules through the eager path (the only one that materialises
probabilities); outputs are unchanged up to floating-point rounding. ``keep`` trims each record
as it is made (e.g. one sample's mask only), so a large batch does not hold every layer's
probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from stamp.attention import RecordsAttention


@contextmanager
def record_attention(
    model: nn.Module, keep: Callable[[dict], dict] | None = None
) -> Iterator[list[dict]]:
    # StampAttention and stamp.inject's InjectedStamp
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, RecordsAttention)]
    records: list[dict] = []
    hooks = []

    def hook(name):
        def _hook(module, args, output):
            if module.recorded is not None:
                rec = module.recorded if keep is None else keep(module.recorded)
                records.append({"name": name, **rec})

        return _hook

    for name, m in modules:
        m.start_recording()
        hooks.append(m.register_forward_hook(hook(name)))
    try:
        yield records
    finally:
        for h in hooks:
            h.remove()
        for _, m in modules:
            m.stop_recording()

"""Reporting code asks a run's mask mode what it is (stamp.config.MaskType properties through
tasks.common.runtime.results.mask_type) instead of comparing mask names."""

import pytest

from stamp.config import MaskType
from tasks.common.runtime.results import format_summary, mask_type

#                 full attention, generator, generator settings (fusion / depth / form)
EXPECTED = {
    "none": (True, False, False),
    "global": (False, True, True),
    "multilayer": (False, True, True),
    "sparse": (False, False, False),
    "extra_linear": (False, False, True),  # a control sized after the generator
    "extra_layers": (False, False, True),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_mask_type_properties(name):
    kind = mask_type({"mask": name})
    assert kind is MaskType(name)
    assert (kind.is_full_attention, kind.uses_generator, kind.has_generator_settings) == (
        EXPECTED[name]
    )


def test_every_mask_type_is_covered_and_unknown_names_are_named():
    assert {m.value for m in MaskType} == set(EXPECTED)
    assert mask_type({}) is None
    with pytest.raises(ValueError, match=r"runs/x: mask 'dense' is not one of none, global"):
        mask_type({"mask": "dense", "run_dir": "runs/x"})


def test_summary_shows_mask_settings_only_for_masked_runs():
    records = [
        {"run_dir": f"r/{m}", "mask": m, "fusion": "add", "depth": 7, "status": "ok"}
        for m in ("none", "multilayer")
    ]
    lines = format_summary(records).splitlines()
    none, multi = (next(line for line in lines if f" {m} " in line) for m in ("none", "multilayer"))
    assert " 7 " in multi and "add" in multi
    assert " 7 " not in none and "add" not in none

"""docs/own_model.md: its python blocks run verbatim (tiny models built from configs, no hub)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import stamp

DOC = Path(__file__).resolve().parents[2] / "docs" / "own_model.md"


def test_own_model_doc_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 6
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), scope)
    # the first block trained and saved BERT's generators; the adapter loads back
    assert (tmp_path / "stamp_adapter" / "stamp_config.json").exists()
    model = scope["model"]
    assert len(stamp.injected_modules(model)) == 2
    fresh = type(model)(scope["config"])
    fresh.load_state_dict(model.state_dict(), strict=False)  # same base weights, no STAMP
    stamp.load(fresh, tmp_path / "stamp_adapter")
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(
            fresh(input_ids=scope["ids"]).logits, model(input_ids=scope["ids"]).logits
        )
    # the next two: a generated sequence, and STAMP only in the ViT's last block
    tokens = scope["tokens"]  # the prompt, then up to 5 tokens (LLaMA's EOS may end it early)
    assert tokens[0, :3].tolist() == [1, 5, 7] and 3 < tokens.shape[1] <= 8
    assert list(stamp.injected_modules(scope["vit"])) == ["blocks.1.attn"]
    assert scope["logits"].shape == (2, 10)
    # the lifecycle block: unloaded (bit for bit, asserted in the block), then loaded back
    assert len(stamp.injected_modules(scope["plain"])) == 2
    files = {p.name for p in (tmp_path / "stamp_adapter").iterdir()}
    assert files == {"stamp_config.json", "adapter_model.safetensors", "README.md"}
    # the encoder-decoder block: BART's self- and cross-attention, then cached generation
    bart_stamps = stamp.injected_modules(scope["bart"])
    assert len(bart_stamps) == 6 and sum(s.cross for s in bart_stamps.values()) == 2
    assert scope["summary"].shape[0] == 2 and scope["summary"].shape[1] <= 7
    # the nn.Transformer DETR: six nn.MultiheadAttention layers, two of them cross-attention
    stamps = stamp.injected_modules(scope["detr"])
    assert len(stamps) == 6 and scope["spans"].shape == (2, 5, 2)
    assert {n for n, s in stamps.items() if s.cross} == {
        f"transformer.decoder.layers.{i}.multihead_attn" for i in range(2)
    }

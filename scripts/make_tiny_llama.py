"""Write a tiny random LlamaForCausalLM + a BPE tokenizer trained offline (tests, demo runs).

    python scripts/make_tiny_llama.py --out data/tiny_llama
    python train.py task=mad_ad model.llm_path=data/tiny_llama ...

The directory loads with ``LlamaForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``
exactly like a converted LLaMA-7B; the tokenizer is trained on the synthetic AD vocabulary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.mad_ad.synthetic import build_tiny_llama  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = build_tiny_llama(
        args.out,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        num_heads=args.heads,
        intermediate_size=args.intermediate_size,
        seed=args.seed,
    )
    print(out)


if __name__ == "__main__":
    main()

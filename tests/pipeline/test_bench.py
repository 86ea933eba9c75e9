"""The attention benchmark runs on CPU and writes its JSON with ratios to plain SDPA."""

import json

from tests.helpers import run_script


def test_bench_attention_writes_ratios(tmp_path):
    proc = run_script(
        [
            "scripts/bench_attention.py",
            "--shapes",
            "qvh_cross",
            "--backends",
            "eager,sdpa",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--batch-scale",
            "0.125",
            "--out",
            str(tmp_path),
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "bench_attention.json").read_text())
    rows = {r["variant"]: r for r in results["shapes"]["qvh_cross"]["rows"]}
    assert rows["plain sdpa"]["time_ratio"] == 1.0 and rows["plain sdpa"]["flop_ratio"] == 1.0
    # plain eager does the same arithmetic as SDPA's math path
    assert rows["plain eager"]["flop_ratio"] == 1.0
    # STAMP adds the generator: depth 32 at width 256 over 75 queries, plus the fusion
    stamp = rows["stamp eager mul"]
    assert stamp["flop_ratio"] > 1.0 and stamp["memory_ratio"] > 1.0
    assert rows["stamp sdpa add"]["flops"] == rows["stamp eager add"]["flops"]
    assert (tmp_path / "bench_attention.md").read_text().startswith("Device: cpu")

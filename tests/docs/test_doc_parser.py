"""The rules that turn documentation into commands (tests/docs/doccommands.py) and decide whether
one passed (test_documented_commands.py), on small texts and commands written for each rule, and
the docs page that states them (docs/testing_docs.md)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.docs.doccommands import (
    SHRINK,
    Command,
    DirectiveError,
    code_blocks,
    doc_commands,
    doc_paths,
    is_shell,
    shrink,
    split_commands,
    strip_comment,
)

ROOT = Path(__file__).resolve().parents[2]

DOC = """# Title

Some text.

<!-- docs-test: skip=gpu "trainer=ddp"; slow "seed=0,1"
     ; writes outputs/x/*.json -->

    python train.py                      # the default
    python train.py -m seed=0,1 \\
        mask=none                        # a sweep
    python train.py trainer=ddp

A layout block is not a command:

    train.py   the entry point
    configs/   the configs

```yaml
paths:
  data_dir: /x
```

```bash
make demo   # sets up
# a comment line
python -c "
import sys
print(sys.argv)  # not a shell comment
"
```

<!-- docs-test: xfail=known-bug -->

```
python eval.py ckpt_path=<run dir>/checkpoints/best-*.ckpt
```
"""


def _commands(tmp_path: Path, text: str = DOC):
    (tmp_path / "doc.md").write_text(text)
    return doc_commands(tmp_path, Path("doc.md"))


def test_blocks_and_which_are_shell():
    blocks = code_blocks(DOC)
    assert [(b.line, b.lang) for b in blocks] == [
        (8, None),
        (15, None),
        (19, "yaml"),
        (24, "bash"),
        (35, ""),
    ]
    assert [is_shell(b) for b in blocks] == [True, False, False, True, True]


def test_commands_continuations_quotes_and_comments(tmp_path):
    cmds = _commands(tmp_path)
    assert [c.line for c in cmds] == [8, 9, 11, 24, 26, 35]
    assert cmds[1].code == "python train.py -m seed=0,1 \\\n    mask=none"  # block indent removed
    assert cmds[3].code == "make demo"
    # the quoted program spans lines and keeps its '#'
    assert cmds[4].code.endswith('print(sys.argv)  # not a shell comment\n"')
    assert cmds[0].text.endswith("# the default") and cmds[0].code == "python train.py"


def test_directives_apply_to_their_block_and_selected_commands(tmp_path):
    cmds = _commands(tmp_path)
    assert [c.skip for c in cmds] == [None, None, "gpu", None, None, None]
    assert [c.slow for c in cmds] == [False, True, False, False, False, False]
    # writes: after the block's last runnable command (the ddp one is skipped)
    assert [c.writes for c in cmds] == [[], ["outputs/x/*.json"], [], [], [], []]
    assert [c.xfail for c in cmds] == [None] * 5 + ["known-bug"]


def test_directive_needs_adjacent_block(tmp_path):
    text = "<!-- docs-test: skip=gpu -->\n\nA paragraph.\n\n    python train.py\n"
    assert _commands(tmp_path, text)[0].skip is None


def test_gpu_commands_are_skipped_without_a_directive(tmp_path):
    text = "    python train.py trainer=gpu\n    python train.py trainer=ddp_cpu\n"
    text += "    python scripts/profile_compute.py --device cuda\n"
    text += "    python train.py -m hydra/launcher=slurm\n"
    assert [c.skip for c in _commands(tmp_path, "\n" + text)] == ["gpu", None, "gpu", "gpu"]


@pytest.mark.parametrize(
    "directive",
    ["skip", "slow-ish", 'slow "no such command"', "writes", 'skip=x "unclosed'],
)
def test_bad_directives_fail(tmp_path, directive):
    with pytest.raises(DirectiveError):
        _commands(tmp_path, f"<!-- docs-test: {directive} -->\n\n    python train.py\n")


def test_console_block_runs_prompt_lines_only(tmp_path):
    text = "```console\n$ python train.py \\\n    seed=1\nfinal metrics\n  val/acc 0.8\n"
    text += "$ make demo\n```\n"
    assert [(c.line, c.code) for c in _commands(tmp_path, text)] == [
        (2, "python train.py \\\n    seed=1"),
        (6, "make demo"),
    ]


def test_strip_comment_and_split():
    assert strip_comment("python a.py x=1   # note") == "python a.py x=1"
    assert strip_comment("python a.py 'x#y' \"#z\"") == "python a.py 'x#y' \"#z\""
    assert strip_comment("python a.py x#y") == "python a.py x#y"
    assert split_commands(["$ make demo", "", "# c", "pip install -e ."]) == [
        (0, "make demo"),
        (3, "pip install -e ."),
    ]


def test_shrink_by_kind():
    demo = SHRINK["train.py demo"]
    assert shrink(ROOT, "python train.py mask=none") == demo
    assert shrink(ROOT, "python eval.py task=demo ckpt_path=x") == demo
    # the task through an experiment file, also through its defaults list
    assert shrink(ROOT, "python train.py experiment=imagenet_tiny") == SHRINK["train.py imagenet"]
    assert (
        shrink(ROOT, "python train.py experiment=imagenet_shards_tiny")
        == SHRINK["train.py imagenet"]
    )
    assert (
        shrink(ROOT, "OMP_NUM_THREADS=1 python scripts/bench_qvhighlights.py --threads 1")
        == (SHRINK["scripts/bench_qvhighlights.py"])
    )
    assert shrink(ROOT, "make demo") == ["ARGS=" + " ".join(demo)]
    assert shrink(ROOT, "python scripts/make_tables.py outputs/") == []


def test_every_doc_parses_and_the_docs_page_lists_the_shrink_table():
    docs = doc_paths(ROOT)
    assert Path("README.md") in docs and Path("docs/testing_docs.md") in docs
    for doc in docs:
        doc_commands(ROOT, doc)  # raises on a bad directive
    page = (ROOT / "docs" / "testing_docs.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|$", page, flags=re.M))
    assert rows == {kind: " ".join(words) for kind, words in SHRINK.items()}


def _runner():
    from tests.docs import test_documented_commands as runner

    return runner


def test_placeholders_resolve_to_the_newest_match(tmp_path):
    runner = _runner()
    for name in ("a", "b"):
        run = tmp_path / "outputs" / "demo" / "multiruns" / name / "0_none"
        (run / "checkpoints").mkdir(parents=True)
        (run / "results.json").write_text("{}")
        (run.parent / "summary.json").write_text("{}")
        os.utime(run / "results.json", (0, 1000 if name == "a" else 2000))
        os.utime(run.parent, (0, 1000 if name == "a" else 2000))
    assert runner.resolve("x <run dir or .ckpt>", tmp_path) == "x outputs/demo/multiruns/b/0_none"
    assert runner.resolve("<sweep dir>", tmp_path) == "outputs/demo/multiruns/b"
    assert runner.resolve("m outputs/demo/multiruns/<t7 sweep> --x", tmp_path) == (
        "m outputs/demo/multiruns/b --x"
    )
    for text in ("m <entity>/<project>", "m <imagenet>", "m outputs/qvh/<date>"):
        with pytest.raises(LookupError):
            runner.resolve(text, tmp_path)


def test_a_command_fails_on_exit_code_missing_output_and_time_limit(tmp_path, monkeypatch):
    runner = _runner()
    clone = runner.Clone(tmp_path)

    def run(text: str, writes: tuple[str, ...] = ()) -> str | None:
        return runner.execute(Command("doc.md", 1, text, 0, writes=list(writes)), clone)

    assert run("bash -c true") is None
    assert "exit 3" in run("bash -c 'exit 3'")
    assert "did not write ['out/x.json']" in run("bash -c true", writes=("out/x.json",))
    assert "did not write ['nowhere']" in run("bash -c true --out nowhere")
    assert run("mkdir -p out && touch out/x.json", writes=("out/*.json",)) is None
    assert "skip=template" in run("python train.py ... seed=1")
    monkeypatch.setattr(runner, "FAST_TIMEOUT_S", 1)
    start = time.monotonic()
    assert "still running after 1s" in run("bash -c 'sleep 30'")
    assert time.monotonic() - start < 10


def test_shrink_of_eval_with_a_checkpoint_alone(tmp_path):
    """``eval.py ckpt_path=<file>`` without ``task=`` gets the overrides of the checkpoint's
    task (its stored config), a checkpoint that is not there those of the demo."""
    import torch

    from tasks.common.runtime.checkpoints import CONFIG_KEY

    ckpt = tmp_path / "run" / "best.ckpt"
    ckpt.parent.mkdir()
    stored = {"task_name": "qvhighlights", "mask": {}, "model": {}}
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2", CONFIG_KEY: stored}, ckpt)
    qvh = SHRINK["train.py qvhighlights"]
    assert shrink(tmp_path, "python eval.py ckpt_path=run/best.ckpt") == qvh
    assert shrink(tmp_path, "python eval.py ckpt_path=run/best*.ckpt split=test") == qvh
    assert shrink(tmp_path, f"python eval.py ckpt_path={ckpt}") == qvh
    assert shrink(tmp_path, "python eval.py ckpt_path=run/none.ckpt") == SHRINK["train.py demo"]

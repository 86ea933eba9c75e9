"""The README's set-up commands, run as their Makefile recipes say (shortened only by sizes).

`make demo` must work on a fresh clone with the default paths, from any working directory: the
test takes the recipe's command line from the Makefile itself, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import re
import shlex

from tests.helpers import ROOT, run_script

# size overrides only: the same experiment, logger, callbacks and paths as `make demo`
SHORTER = ["data.num_train=128", "data.num_val=64", "data.num_test=64", "trainer.max_epochs=1"]


def make_recipe(target: str) -> list[str]:
    """The command line of a Makefile target's recipe (continuation lines joined)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert match, f"no '{target}' target in the Makefile"
    lines = [line.strip() for line in match.group(1).splitlines() if line.strip()]
    assert len(lines) == 1, f"'{target}' should run one command, found {lines}"
    return [w for w in shlex.split(lines[0]) if w != "$(ARGS)"]  # ARGS: the user's extra overrides


def test_make_demo_command_runs_on_default_paths(tmp_path):
    argv = make_recipe("demo")
    env = dict(a.split("=", 1) for a in argv if re.match(r"^[A-Z_]+=", a))
    argv = [a for a in argv if not re.match(r"^[A-Z_]+=", a)]
    assert argv[0] == "$(PY)" and argv[1] == "train.py", argv
    proc = run_script([str(ROOT / "train.py"), *argv[2:], *SHORTER], cwd=tmp_path, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # default paths: outputs/ under the working directory, one sweep with the three masks
    results = sorted((tmp_path / "outputs" / "demo" / "multiruns").glob("*/*/results.json"))
    records = [json.loads(p.read_text()) for p in results]
    assert sorted(r["mask"] for r in records) == ["global", "multilayer", "none"]
    assert all(r["status"] == "ok" for r in records)
    assert "| run | mask |" in out  # the summary table is printed

"""The shell commands of the documentation, as a reader would copy them (docs/testing_docs.md).

Which text is a command, which commands run, how they are shrunk and what they must write is
decided here, in one place; ``test_documented_commands.py`` runs them in a clone of the tree.

Rules (documented for writers in docs/testing_docs.md):

* Documents: README.md, BENCHMARKS.md, every ``docs/*.md`` and ``configs/local/README.md``.
* A code block is a shell block when it is fenced as ``bash`` / ``sh`` / ``shell`` / ``console``,
  or when it is unlabelled (indented by 4 spaces, or a bare fence) and its first line that is not
  a comment starts with a command (``python``, ``make``, ``.venv/bin/...``, ``pip``, ``pytest``,
  ``bash``, ``wandb``, ``git``, optionally after ``VAR=value`` prefixes or a ``$`` prompt).
* Every line of a shell block is part of a command (in a ``console`` block only the ``$ `` lines
  and their continuations; the other lines are output): ``\\`` continues a line, an open quote
  continues a command (``python -c "..."``), ``#`` starts a comment, comment-only lines are not
  commands.
* An HTML comment ``<!-- docs-test: ... -->`` directly above a block (blank lines between are
  allowed) carries directives separated by ``;``: ``skip=REASON``, ``slow``, ``xfail=REASON``,
  each for the whole block or, followed by quoted substrings, for the commands containing one of
  them; and ``writes PATH ...``, paths (globs, ``<...>`` placeholders) that must exist after the
  block's last runnable command (or after the command named by a quoted substring).
* A command that needs a GPU or a cluster is skipped without a directive (``GPU_PATTERNS``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

SHELL_LANGS = {"bash", "sh", "shell", "console"}

# a command: optional VAR=value prefixes, then one of these programs
COMMAND_RE = re.compile(
    r"^(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*"
    r"(?:python3?|\.venv/bin/\S+|make|pip|pytest|bash|wandb|git)(?:\s|$)"
)

# commands that cannot run on this CPU machine whatever the directives say (reason: gpu)
GPU_PATTERNS = [
    r"\btrainer=(?:gpu|ddp|multinode)(?:\s|$)",
    r"--device\s+cuda\b",
    r"\bhydra/launcher=slurm\b",
    r"^make\s+bench-gpu\b",
]

DIRECTIVE_RE = re.compile(r"<!--\s*docs-test:(.*?)-->", re.S)
DIRECTIVE_START_RE = re.compile(r"<!--\s*docs-test:")
PLACEHOLDER_RE = re.compile(r"<([^<>\s/][^<>]*)>")


def doc_paths(root: Path) -> list[Path]:
    """The documents whose commands are tested, relative to ``root``, in a stable order."""
    docs = [Path("README.md"), Path("BENCHMARKS.md")]
    docs += sorted(p.relative_to(root) for p in (root / "docs").glob("*.md"))
    docs.append(Path("configs/local/README.md"))
    return [d for d in docs if (root / d).is_file()]


@dataclass
class Block:
    """A code block: its first line number (1-based), language, lines and the directives text."""

    line: int
    lang: str | None  # None: indented block
    lines: list[str]
    directives: str = ""


@dataclass
class Command:
    """One documented command and what the tests do with it."""

    doc: str
    line: int
    text: str  # as written (continuations and trailing comment included)
    block: int  # index of its block in the document
    skip: str | None = None
    slow: bool = False
    xfail: str | None = None
    writes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def code(self) -> str:
        """The command without its trailing comment (what the shell runs)."""
        return strip_comment(self.text).strip()


class DirectiveError(ValueError):
    """A ``docs-test`` directive that cannot be applied (typo, substring matching nothing)."""


def code_blocks(text: str) -> list[Block]:
    """Fenced and indented code blocks of a markdown text, with the directives just above each."""
    lines = text.split("\n")
    blocks: list[Block] = []
    pending = ""  # directives seen since the last non-blank, non-directive text
    prev_blank = True
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^(```+|~~~+)\s*([\w+-]*)", line)
        if fence:
            j = i + 1
            while j < len(lines) and not lines[j].startswith(fence.group(1)):
                j += 1
            blocks.append(Block(i + 2, fence.group(2) or "", lines[i + 1 : j], pending))
            pending, prev_blank, i = "", False, j + 1
            continue
        if line.startswith("    ") and line.strip() and prev_blank:
            j, body = i, []
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                body.append(lines[j][4:])
                j += 1
            while body and not body[-1].strip():
                body.pop()
            blocks.append(Block(i + 1, None, body, pending))
            pending, prev_blank, i = "", True, i + len(body)
            continue
        if DIRECTIVE_START_RE.search(line):
            # may span lines: gather up to the closing -->
            j, chunk = i, line
            while "-->" not in chunk and j + 1 < len(lines):
                j += 1
                chunk += "\n" + lines[j]
            pending += ";" + "".join(m.group(1) for m in DIRECTIVE_RE.finditer(chunk))
            prev_blank, i = True, j + 1
            continue
        if line.strip():
            pending = ""
            prev_blank = False
        else:
            prev_blank = True
        i += 1
    return blocks


def is_shell(block: Block) -> bool:
    """A block of shell commands (module docstring: fenced as a shell, or starting with one)."""
    if block.lang:
        return block.lang.lower() in SHELL_LANGS
    first = next((ln.strip() for ln in block.lines if ln.strip() and not _comment(ln)), "")
    return bool(COMMAND_RE.match(first))


def _comment(line: str) -> bool:
    return line.strip().startswith("#")


def strip_comment(text: str) -> str:
    """``text`` up to its shell comment: a ``#`` at a word start outside quotes."""
    quote = None
    for k, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or text[k - 1].isspace()):
            return text[:k].rstrip()
    return text


def _complete(text: str) -> bool:
    try:
        shlex.split(strip_comment(text))
    except ValueError:  # an open quote: the command goes on
        return False
    return not text.rstrip().endswith("\\")


def split_commands(lines: list[str], prompts_only: bool = False) -> list[tuple[int, str]]:
    """(line offset in the block, command text) for each command of a shell block.
    ``prompts_only`` (a ``console`` block): only ``$ `` lines start a command, others are output."""
    out: list[tuple[int, str]] = []
    current, start = "", 0
    for k, line in enumerate(lines):
        if not current:
            if not line.strip() or _comment(line):
                continue
            if prompts_only and not line.lstrip().startswith("$ "):
                continue
            start, current = k, re.sub(r"^\$\s+", "", line.strip())
        else:
            current += "\n" + line
        if _complete(current):
            out.append((start, current))
            current = ""
    if current:
        out.append((start, current))
    return out


def _apply(directives: str, commands: list[Command], where: str) -> None:
    """Set skip / slow / xfail / writes on the commands of one block from its directives."""
    for item in filter(None, (d.strip() for d in directives.split(";"))):
        try:
            words = shlex.split(item)
        except ValueError as err:
            raise DirectiveError(f"{where}: cannot parse directive {item!r}: {err}") from err
        key, _, value = words[0].partition("=")
        args = words[1:]
        if key == "writes":
            paths = [a for a in args if not a.startswith("@")]
            picks = [a[1:] for a in args if a.startswith("@")]
            if not paths:
                raise DirectiveError(f"{where}: 'writes' needs a path")
            runnable = [c for c in commands if not c.skip]
            targets = _select(commands, picks, where) if picks else runnable[-1:]
            if not targets:
                raise DirectiveError(f"{where}: 'writes' follows no runnable command")
            targets[-1].writes.extend(paths)
            continue
        if key not in ("skip", "slow", "xfail"):
            raise DirectiveError(
                f"{where}: unknown directive {words[0]!r} (skip=, slow, xfail=, writes)"
            )
        if key in ("skip", "xfail") and not value:
            raise DirectiveError(f"{where}: '{key}' needs a reason ({key}=REASON)")
        for cmd in _select(commands, args, where) if args else commands:
            if key == "skip":
                cmd.skip = cmd.skip or value
            elif key == "slow":
                cmd.slow = True
            else:
                cmd.xfail = value


def _select(commands: list[Command], substrings: list[str], where: str) -> list[Command]:
    picked = []
    for sub in substrings:
        hits = [c for c in commands if sub in c.text]
        if not hits:
            raise DirectiveError(f"{where}: directive substring {sub!r} matches no command")
        picked += [c for c in hits if c not in picked]
    return picked


def doc_commands(root: Path, doc: Path) -> list[Command]:
    """Every command of one document with its directives applied, in document order."""
    commands: list[Command] = []
    shell_blocks = [b for b in code_blocks((root / doc).read_text()) if is_shell(b)]
    for index, block in enumerate(shell_blocks):
        cmds = [
            Command(str(doc), block.line + offset, text, index)
            for offset, text in split_commands(block.lines, (block.lang or "").lower() == "console")
        ]
        for cmd in cmds:
            if any(re.search(p, cmd.code) for p in GPU_PATTERNS):
                cmd.skip = "gpu"
        _apply(block.directives, cmds, f"{doc}:{block.line}")
        commands += cmds
    return commands


# ---------------------------------------------------------------------------------------------
# Size overrides: the only change made to a documented command, appended to it by kind.
# Kind "train.py <task>" also serves eval.py; "make <target>" passes the train.py overrides of the
# target's task in the Makefile's ARGS variable. docs/testing_docs.md lists this table.
SHRINK: dict[str, list[str]] = {
    "train.py demo": [
        "data.num_train=128",
        "data.num_val=64",
        "data.num_test=64",
        "trainer.max_epochs=1",
    ],
    "train.py imagenet": ["trainer.max_epochs=1"],
    "train.py mad_ad": ["trainer.max_epochs=2"],  # stage 1 (1 epoch), then stage 2
    "train.py msrvtt": ["trainer.max_epochs=1"],
    "train.py ave": ["model.vit_depth=1"],  # one ViT-Tiny block (ave_tiny: 1 epoch already)
    "train.py qvhighlights": [
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=2",
        "data.eval_batch_size=32",
    ],
    "scripts/profile_compute.py": ["--warmup", "0", "--repeats", "1"],
    "scripts/bench_qvhighlights.py": ["--steps", "1", "--eval-repeats", "1"],
    "scripts/bench_attention.py": ["--repeats", "1", "--warmup", "0", "--scaling-n", "64,128"],
}
MAKE_TASKS = {"demo": "demo", "demo-seeds": "demo", "qvhighlights-proxy": "qvhighlights"}


def experiment_task(root: Path, experiment: str) -> str | None:
    """The task an experiment file selects (``override /task: X``, or through its defaults)."""
    path = root / "configs" / "experiment" / f"{experiment}.yaml"
    if not path.is_file():
        return None
    text = path.read_text()
    found = re.search(r"override /task:\s*(\w+)", text)
    if found:
        return found.group(1)
    for parent in re.findall(r"^\s*-\s*(\w+)\s*$", text, flags=re.M):
        if parent != "_self_" and (task := experiment_task(root, parent)):
            return task
    return None


def checkpoint_task(root: Path, path: str) -> str | None:
    """The task a checkpoint was trained on (its stored config), for ``eval.py ckpt_path=<file>``
    without ``task=``; None when it is not there (yet) or carries no config."""
    from tasks.common.runtime.checkpoints import CONFIG_KEY, read_checkpoint

    found = sorted(root.glob(path)) if not Path(path).is_absolute() else [Path(path)]
    if len(found) != 1 or not found[0].is_file():
        return None
    try:
        return (read_checkpoint(found[0]).get(CONFIG_KEY) or {}).get("task_name")
    except ValueError:
        return None


def command_task(root: Path, words: list[str]) -> str:
    """The task a train.py / eval.py command line runs (``task=``, ``experiment=``, the
    checkpoint's of ``ckpt_path=<file>``, else demo)."""
    for word in words:
        if word.startswith("task="):
            return word.split("=", 1)[1].split(",")[0]
    for word in words:
        if word.startswith("experiment="):
            task = experiment_task(root, word.split("=", 1)[1].split(",")[0])
            if task:
                return task
    for word in words:
        if word.startswith("ckpt_path=") and (task := checkpoint_task(root, word.split("=", 1)[1])):
            return task
    return "demo"


def shrink(root: Path, code: str) -> list[str]:
    """The size overrides for one command (``SHRINK``), as words to append to it."""
    try:
        words = shlex.split(code)
    except ValueError:
        return []
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    if len(words) >= 2 and words[0] == "make" and words[1] in MAKE_TASKS:
        return ["ARGS=" + " ".join(SHRINK[f"train.py {MAKE_TASKS[words[1]]}"])]
    if len(words) < 2 or not re.match(r"^(python3?|\.venv/bin/python3?)$", words[0]):
        return []
    script = words[1]
    if script in ("train.py", "eval.py"):
        return list(SHRINK.get(f"train.py {command_task(root, words[2:])}", []))
    return list(SHRINK.get(script, []))

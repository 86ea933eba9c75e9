"""Every command of the documentation, run as written in a clone of the tree (docs/testing_docs.md).

One test per command, in document order. Each document gets its own copy of the repository's
files (``git ls-files``: tracked plus untracked, not ignored) in a temporary directory, with
the default paths (no ``STAMP_ROOT``) and this virtualenv as ``.venv``; the commands of one
document share it, so a later command finds what an earlier one wrote. A test selected alone
(``-k`` or ``-m slow``) first runs the document's earlier runnable commands it has not run yet.

A command fails its test when it exits non-zero, when a path its ``writes`` directive names (or
a path given to ``--out`` / ``--md`` / ``--plot`` / ``--json`` / ``--save``) is missing after it,
or when a ``<placeholder>`` in it cannot be resolved.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docs.doccommands import (
    PLACEHOLDER_RE,
    Command,
    DirectiveError,
    doc_commands,
    doc_paths,
    shrink,
)

ROOT = Path(__file__).resolve().parents[2]


def _collect() -> tuple[list[Command], list[str]]:
    commands, errors = [], []
    for doc in doc_paths(ROOT):
        try:
            commands += doc_commands(ROOT, doc)
        except DirectiveError as err:  # reported by test_directives_parse, the rest still runs
            errors.append(str(err))
    return commands, errors


COMMANDS, DIRECTIVE_ERRORS = _collect()
OUTPUT_FLAGS = ("--out", "--md", "--plot", "--json", "--save")
FAST_LIMIT_S = 60  # a fast command slower than this warns: mark it slow (the default run's budget)
FAST_TIMEOUT_S = 300  # ... and one still running after this fails (an unmarked long command)
SLOW_TIMEOUT_S = 3000


def _params():
    for cmd in COMMANDS:
        marks = []
        if cmd.skip:
            marks.append(pytest.mark.skip(reason=f"docs-test skip: {cmd.skip}"))
        if cmd.slow:
            marks += [pytest.mark.slow, pytest.mark.timeout(3600)]
        if cmd.xfail:
            marks.append(pytest.mark.xfail(reason=cmd.xfail, strict=True))
        yield pytest.param(cmd, id=cmd.id, marks=marks)


@dataclass
class Clone:
    """A document's copy of the repository and which of its commands ran there (id -> ok)."""

    path: Path
    ran: dict[str, bool] = field(default_factory=dict)


def repository_files(root: Path) -> list[str]:
    """The files a clone would hold: tracked, plus untracked ones that git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def make_clone(dest: Path) -> Path:
    """Copy the repository's files to ``dest`` and give it this interpreter's virtualenv as
    ``.venv`` (links into it, plus its own ``.installed`` so that make never reinstalls)."""
    for name in repository_files(ROOT):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    venv = Path(sys.prefix)
    link = dest / ".venv"
    link.mkdir()
    for entry in venv.iterdir():
        if entry.name == "pyvenv.cfg":
            shutil.copy2(entry, link / entry.name)
        elif entry.name != ".installed":
            (link / entry.name).symlink_to(entry.resolve())
    (link / ".installed").touch()
    return dest


@pytest.fixture(scope="session")
def clones(tmp_path_factory):
    if sys.prefix == sys.base_prefix:
        pytest.skip("the docs tests use the running virtualenv as the clone's .venv")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("the docs tests copy the files git knows of")
    made: dict[str, Clone] = {}

    def get(doc: str) -> Clone:
        if doc not in made:
            name = re.sub(r"\W", "_", doc)
            made[doc] = Clone(make_clone(tmp_path_factory.mktemp(name, numbered=True)))
        return made[doc]

    return get


def command_env(clone: Path) -> dict[str, str]:
    """The user's environment in the clone: its .venv first on PATH, default paths, offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("STAMP_ROOT", "VIRTUAL_ENV")}
    env["PATH"] = f"{clone / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # what `pip install -e .` in the clone would give: the clone's packages, not this tree's
    env["PYTHONPATH"] = str(clone)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        MPLBACKEND="Agg",
    )
    return env


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime, default=None)


def run_dirs(clone: Path) -> list[Path]:
    """Training run directories (a results.json beside a checkpoints/ folder)."""
    return [
        p.parent
        for p in (clone / "outputs").rglob("results.json")
        if (p.parent / "checkpoints").is_dir()
    ]


def sweep_dirs(clone: Path) -> list[Path]:
    """Sweep directories (outputs/<task>/multiruns/<time> with a summary.json)."""
    return [p.parent for p in (clone / "outputs").glob("*/multiruns/*/summary.json")]


NAMED = {"run dir": run_dirs, "run dir or .ckpt": run_dirs, "sweep dir": sweep_dirs}


def _in_path(text: str, at: int) -> bool:
    """Whether the placeholder at ``at`` follows a literal path prefix (``outputs/x/<time>``)."""
    start = max(text.rfind(" ", 0, at), text.rfind("\n", 0, at)) + 1
    prefix = text[start:at]
    return "/" in prefix and not prefix.startswith("<")


def resolve(text: str, clone: Path) -> str:
    """``text`` with its placeholders replaced (docs/testing_docs.md): ``<run dir>`` / ``<sweep
    dir>`` by the newest such directory in the clone, a placeholder after a literal path prefix
    (``outputs/demo/multiruns/<time>``) by the newest existing match of that path."""

    def named(match: re.Match) -> str:
        found = _newest(NAMED[match.group(1)](clone))
        if found is None:
            raise LookupError(f"no {match.group(0)} in the clone for {text!r}")
        return str(found.relative_to(clone))

    text = re.sub(r"<(run dir(?: or \.ckpt)?|sweep dir)>", named, text)

    # a placeholder after a literal path prefix (no whitespace between): the newest match
    marked = PLACEHOLDER_RE.sub(lambda m: "\0" if _in_path(text, m.start()) else m.group(0), text)

    def newest_match(match: re.Match) -> str:
        pattern = match.group(0).replace("\0", "*")
        found = _newest(list(clone.glob(pattern.rstrip("/"))))
        if found is None:
            raise LookupError(f"nothing in the clone matches {pattern!r} (from {text!r})")
        return str(found.relative_to(clone))

    text = re.sub(r"\S*\0\S*", newest_match, marked)
    left = PLACEHOLDER_RE.findall(text)
    if left:
        raise LookupError(
            f"unresolved placeholder(s) {left} in {text!r}: use <run dir> / <sweep dir> or a path "
            "under a literal prefix, or mark the command skip=template"
        )
    return text


def _words(code: str) -> list[str]:
    try:
        return shlex.split(code)
    except ValueError:
        return []


def output_paths(code: str) -> list[str]:
    """Paths given to the output flags of a command (they must exist after it)."""
    try:
        words = shlex.split(code)
    except ValueError:
        return []
    return [
        b
        for a, b in zip(words, words[1:], strict=False)
        if a in OUTPUT_FLAGS and not b.startswith("-")
    ]


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def execute(cmd: Command, clone: Clone) -> str | None:
    """Run one command in its clone; the failure message, or None when it did what it says."""
    code = cmd.code
    if any(w == "..." or w.startswith("[") for w in _words(code)):
        return f"{cmd.id}: looks like a template ('...' or [optional]): mark it skip=template"
    try:
        code = resolve(code, clone.path)
    except LookupError as err:
        return f"{cmd.id}: {err}"
    extra = shrink(clone.path, code)
    line = code + "".join(" " + shlex.quote(w) for w in extra)
    start, cpu0 = time.monotonic(), _child_cpu()
    limit = SLOW_TIMEOUT_S if cmd.slow else FAST_TIMEOUT_S
    proc = subprocess.Popen(
        ["bash", "-c", line],
        cwd=clone.path,
        env=command_env(clone.path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends every child too
    )
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"{cmd.id}: still running after {limit}s: {line} (mark it slow, or skip=long)"
    took, cpu = time.monotonic() - start, _child_cpu() - cpu0
    print(f"[docs-test] {cmd.id} {took:.1f}s wall {cpu:.1f}s cpu: {line}")
    if proc.returncode != 0:
        out = (stdout + stderr)[-6000:]
        return f"{cmd.id}: exit {proc.returncode} after {took:.0f}s: {line}\n{out}"
    missing = []
    for pattern in [*cmd.writes, *output_paths(code)]:
        try:
            pattern = resolve(pattern, clone.path)
        except LookupError:
            pattern = PLACEHOLDER_RE.sub("*", pattern)
        if not list(clone.path.glob(pattern.rstrip("/"))):
            missing.append(pattern)
    if missing:
        return f"{cmd.id}: ran ({line}) but did not write {missing}"
    if not cmd.slow and took > FAST_LIMIT_S:
        import warnings

        warnings.warn(
            f"{cmd.id} took {took:.0f}s: mark it slow (docs/testing_docs.md)", stacklevel=1
        )
    return None


def test_directives_parse():
    assert not DIRECTIVE_ERRORS, "\n".join(DIRECTIVE_ERRORS)


@pytest.mark.parametrize("cmd", list(_params()))
def test_documented_command(cmd: Command, clones):
    clone = clones(cmd.doc)
    # the document's earlier runnable commands first (when this test was selected alone)
    for prev in COMMANDS:
        if prev is cmd:
            break
        if prev.doc != cmd.doc or prev.skip or prev.id in clone.ran:
            continue
        if prev.slow and not cmd.slow:  # a fast command never needs a slow one
            continue
        error = execute(prev, clone)
        clone.ran[prev.id] = error is None
        if error and not prev.xfail:
            pytest.fail(f"an earlier command of {cmd.doc} failed: {error}", pytrace=False)
    error = execute(cmd, clone)
    clone.ran[cmd.id] = error is None
    if error:
        pytest.fail(error, pytrace=False)

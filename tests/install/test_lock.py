"""requirements.lock (``make lock``, pip-tools) must pin every dependency of pyproject.toml that
``make install`` installs, each at a version its specifier allows."""

from __future__ import annotations

import re

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers import ROOT

LOCK = ROOT / "requirements.lock"
EXTRAS = ("dev", "audio", "cluster")  # Makefile EXTRAS


def locked_versions(text: str) -> dict[str, Version]:
    pins = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def direct_requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra in EXTRAS:
        found += [(f"[{extra}]", Requirement(r)) for r in project["optional-dependencies"][extra]]
    return found


def lock_problems(requirements: list[tuple[str, Requirement]], pins: dict[str, Version]) -> list:
    problems = []
    for where, req in requirements:
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name} (pyproject {where}: {req}) is not in requirements.lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} in requirements.lock does not satisfy {req}")
    return problems


def test_lock_pins_every_direct_dependency():
    problems = lock_problems(direct_requirements(), locked_versions(LOCK.read_text()))
    assert not problems, "\n".join([*problems, "-> run `make lock` and commit requirements.lock"])


def test_lock_keeps_the_torch_cap():
    pins = locked_versions(LOCK.read_text())
    lines = (ROOT / "lock-constraints.txt").read_text().splitlines()
    caps = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    for cap in caps:
        assert cap.specifier.contains(pins[canonicalize_name(cap.name)]), cap


def test_the_check_names_what_is_missing_or_out_of_range():
    reqs = [("dependencies", Requirement("peft>=0.13")), ("[dev]", Requirement("ruff>=0.6"))]
    pins = {"ruff": Version("0.5.0")}
    assert lock_problems(reqs, pins) == [
        "peft (pyproject dependencies: peft>=0.13) is not in requirements.lock",
        "ruff==0.5.0 in requirements.lock does not satisfy ruff>=0.6",
    ]

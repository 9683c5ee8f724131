"""What the package and the image are built from: the supported Pythons, the licence, and the
lock file the image installs (every runtime pin of pyproject.toml, with hashes)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCK = (ROOT / "requirements.lock").read_text()
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()


def locked() -> dict[str, tuple[str, int]]:
    """Package → (version, number of hashes) of requirements.lock."""
    found = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", LOCK):
        head = re.match(r"([A-Za-z0-9_.\-\[\]]+)==([^\s\\]+)", entry)
        if head is not None:
            name = re.sub(r"\[.*\]", "", head[1]).lower().replace("_", "-")
            found[name] = (head[2], entry.count("--hash=sha256:"))
    return found


def test_python_3_11_to_3_13_are_stated() -> None:
    supported = SpecifierSet(PROJECT["requires-python"])
    assert all(v in supported for v in ("3.11.7", "3.12.1", "3.13.0"))
    assert "3.14.0" not in supported and "3.10.13" not in supported
    stated = {c.rsplit(" ", 1)[1] for c in PROJECT["classifiers"] if re.search(r":: 3\.\d+$", c)}
    assert stated == {"3.11", "3.12", "3.13"}


def test_the_licence_is_apache_2() -> None:
    assert PROJECT["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    lock = locked()
    for line in PROJECT["dependencies"]:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        assert name in lock, f"{name} is not in requirements.lock: run `make lock`"
        version = lock[name][0]
        assert version in requirement.specifier, f"{name}: locked {version}, wants {line}"
    assert all(hashes > 0 for _, hashes in lock.values())
    assert "aiokafka" in lock  # the transitive dependencies are locked too


def test_the_image_installs_the_lock_before_the_sources() -> None:
    install = DOCKERFILE.index("--require-hashes")
    assert "-r requirements.lock" in DOCKERFILE[install : DOCKERFILE.index("\n", install)]
    assert DOCKERFILE.index("COPY requirements.lock") < install < DOCKERFILE.index("COPY tandem")
    assert "pip install --no-deps ." in DOCKERFILE

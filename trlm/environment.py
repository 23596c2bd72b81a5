"""What a run ran on: Python, the version of every package trlm depends on, and a hash of the whole
installed set, recorded in run.json so that two runs can tell they ran in the same environment."""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import platform

from packaging.requirements import Requirement


def direct_dependencies() -> list[str]:
    """trlm's own requirements, its optional extras' included (those installed are recorded)."""
    try:
        requires = metadata.requires("trlm") or []
    except metadata.PackageNotFoundError:  # run from a checkout without installing: nothing to read
        return []
    return sorted({Requirement(line).name for line in requires})


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_digest() -> str:
    """sha256 over every installed distribution's name==version: the same hash, the same environment."""
    names = ((d.metadata["Name"], d.version) for d in metadata.distributions())
    pins = sorted({f"{name}=={version}".lower() for name, version in names if name})
    return hashlib.sha256("\n".join(pins).encode()).hexdigest()


def environment_record() -> dict[str, object]:
    versions = {name: version for name in direct_dependencies() if (version := installed_version(name))}
    return {"python": platform.python_version(), "versions": versions, "environment_sha256": environment_digest()}

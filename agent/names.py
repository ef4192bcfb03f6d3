"""podman's naming rule for containers, in a module that imports nothing (config and podman both use it)."""

from __future__ import annotations

import re

# What `podman create --name` accepts; a name that matches can go into a command line safely.
CONTAINER_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def is_container_name(name: object) -> bool:
    """Whether `name` is a name podman would give a container."""
    return isinstance(name, str) and CONTAINER_NAME_RE.fullmatch(name) is not None

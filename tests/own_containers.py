"""Containers a test module makes on local podman, by name, and nothing else.

`podman(...)` runs local podman (no stdin; a failure asserts with podman's stderr);
`OwnContainers` knows the module's image and names: it imports the testbed's busybox image
once, removes its names before and after the module, and inspects only those names.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any, Iterator

from agent import testbed


def podman(*argv: str, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(["podman", *argv], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, f"podman {' '.join(argv)}: {result.stderr.decode(errors='replace')}"
    return result.stdout.decode(errors="replace")


class OwnContainers:
    def __init__(self, image: str, names: tuple[str, ...]) -> None:
        self.image = image
        self.names = names

    def inspect(self, name: str) -> dict[str, Any]:
        assert name in self.names, name  # never touch anyone else's containers
        return json.loads(podman("container", "inspect", name))[0]

    def running(self, name: str) -> bool:
        state = self.inspect(name)["State"]
        return state["Status"] == "running" and state["Pid"] > 1

    def session(self) -> Iterator[str]:
        """A module fixture's body: the image there and the names free, then removed."""
        if subprocess.run(["podman", "image", "exists", self.image]).returncode != 0:
            subprocess.run(["podman", "import", "--change", 'CMD ["/bin/sh"]', "-", self.image],
                           input=testbed.image_tar()[0], capture_output=True, timeout=300, check=True)
        podman("rm", "--force", "--ignore", "--time", "0", *self.names)
        yield self.image
        podman("rm", "--force", "--ignore", "--time", "0", *self.names, check=False)

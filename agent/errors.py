"""The one error hierarchy of podwarden: a small class per cause, carrying its facts.

Errors are turned into messages and exit codes only at the CLI edge (agent/cli.py).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class PodwardenError(Exception):
    """Base of every error podwarden raises on purpose."""

    exit_code = EXIT_FAIL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(PodwardenError):
    """The config file is missing, unreadable or invalid: names file, key and fix."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, key: str, problem: str) -> None:
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + problem)
        self.path = path
        self.key = key
        self.problem = problem


class UsageError(PodwardenError):
    """Bad command-line input that click itself could not catch."""

    exit_code = EXIT_USAGE


class InvalidContainerName(UsageError):
    """A container name that podman would refuse (and that we refuse to put in a shell)."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"invalid container name {name!r}: podman names match "
            "[a-zA-Z0-9][a-zA-Z0-9_.-]*"
        )
        self.name = name


class TargetUnreachable(PodwardenError):
    """The target cannot be reached or refused us: wrong port, bad key, host key mismatch."""

    exit_code = EXIT_UNREACHABLE

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"target {target} unreachable: {reason}")
        self.target = target
        self.reason = reason


class TransportError(PodwardenError):
    """A command could not be run on the target (channel failure, link lost mid-command)."""

    def __init__(self, target: str, argv: list[str] | tuple[str, ...], reason: str) -> None:
        super().__init__(f"{target}: {' '.join(argv)}: {reason}")
        self.target = target
        self.argv = list(argv)
        self.reason = reason


class CommandTimeout(TransportError):
    """A command ran past its timeout and was cut off."""

    def __init__(self, target: str, argv: list[str] | tuple[str, ...], timeout_s: float) -> None:
        super().__init__(target, argv, f"timed out after {timeout_s:g}s")
        self.timeout_s = timeout_s


class CommandFailed(PodwardenError):
    """A command ran and exited non-zero where success was required."""

    def __init__(self, target: str, argv: list[str] | tuple[str, ...], exit_status: int, stderr: str) -> None:
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no stderr"
        super().__init__(f"{target}: {' '.join(argv)} exited {exit_status}: {tail}")
        self.target = target
        self.argv = list(argv)
        self.exit_status = exit_status
        self.stderr = stderr


class TestbedError(PodwardenError):
    """The testbed could not be built or started."""

    __test__ = False  # not a pytest test class

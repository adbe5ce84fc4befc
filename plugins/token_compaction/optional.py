"""The error raised when an optional dependency (triton, tensorrt) is missing."""

from ftp_deploy.errors import MissingDependencyError


class OptionalDependencyError(MissingDependencyError, ImportError):
    """An optional package is not installed.

    An ImportError, so plain Python callers can catch it as such, and a MissingDependencyError,
    so the CLI reports it as one line with a usage exit code.
    """


def missing_dependency(module: str, extra: str) -> OptionalDependencyError:
    """The error for `module` missing, naming the pip extra that installs it."""
    return OptionalDependencyError(
        f"{module} is not installed; install it with: pip install 'ftp-deploy[{extra}]'", name=module
    )

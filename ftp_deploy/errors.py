"""One exception tree; the CLI turns any of these into one clear line and an exit code."""


class FtpDeployError(Exception):
    """Base of every error ftp-deploy reports to a user. `exit_code` is what the CLI returns."""

    exit_code = 1


class UsageError(FtpDeployError):
    """Bad input from the user: a missing file, an out-of-range option, a wrong folder."""

    exit_code = 2


class ModelLoadError(UsageError):
    """The base model could not be found or loaded."""


class UnsupportedArchitectureError(UsageError):
    """The model is not of the LLaMA-family decoder layout ftp-deploy routes."""


class ConfigError(UsageError):
    """A schedule, routing setting or saved config is invalid."""


class ArtifactError(UsageError):
    """A saved run or artifact folder is missing, corrupt or of another format."""


class BaseModelMismatchError(ArtifactError):
    """A saved router belongs to a different base model than the one given."""


class PromptError(UsageError):
    """A prompt generation cannot take: empty, wrongly padded, or longer than the model's context."""


class PrefillOnlyExportError(ArtifactError):
    """An export without the decode graph (no --with-past) was given to a generator."""


class CacheCapacityError(PromptError):
    """A decode step beyond the room an in-place cache was allocated with (the prefill's max_new_tokens)."""


class CacheMismatchError(UsageError):
    """A generation cache made by another export (its graphs' sha256s differ) was given to a generator."""


class DataError(UsageError):
    """Training or evaluation data is missing, empty or malformed."""


class MissingDependencyError(UsageError):
    """An optional dependency or hardware (TensorRT, a CUDA GPU, triton) is not available."""


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


class DeviceMemoryError(UsageError):
    """The model or its batch does not fit the GPU's memory with the options given."""


class ParityError(FtpDeployError):
    """An exported model does not match its reference within tolerance."""

    exit_code = 1


class StorageError(FtpDeployError):
    """A file could not be written (a full disk, a read-only folder); what was saved before stays."""


class RankFailure(FtpDeployError):
    """A process of a multi-process run stopped or did not answer in time; the run folder keeps its last checkpoint."""


class ExportError(FtpDeployError):
    """Exporting a model failed for a reason other than bad input (the exporter or the runtime)."""


class UnsupportedExportError(UsageError):
    """The run or the options ask for something the exporter cannot produce (a router, opset, dtype)."""


class OutputFolderError(UsageError):
    """The output folder cannot be written, or holds files that would be replaced."""


class EngineBuildError(ExportError):
    """TensorRT could not build an engine from an exported file (parser errors, a failed build)."""


class OnnxParseError(EngineBuildError):
    """TensorRT's ONNX parser refused the file; `errors` lists every error it reported."""

    def __init__(self, model: str, errors: list[str]) -> None:
        super().__init__(f"TensorRT could not parse {model}: " + "; ".join(errors))
        self.errors = errors


class PlanCompatibilityError(ArtifactError):
    """A TensorRT plan was built for another TensorRT version or GPU than this machine's."""


class ShapeOutOfProfileError(UsageError):
    """An input's shape lies outside the optimization profile the engine was built for."""


class EngineLoadError(FtpDeployError):
    """TensorRT could not deserialize or run a plan file."""


class PluginMissingError(MissingDependencyError):
    """A TensorRT plugin the engine needs is not in TensorRT's plugin registry."""


class ExportValidationError(ParityError):
    """The exported file does not match the PyTorch model; `failures` lists every check that failed."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__("the exported model failed validation: " + "; ".join(failures))
        self.failures = failures


class ServerError(FtpDeployError):
    """The inference server did not start, or stopped while serving; the line says what its log said."""

"""Exceptions raised by llmos.

Every error names what is wrong: ``file`` (the offending file, or None), ``field`` (the
config field, header field, tensor or argument, or None) and a message saying what was
expected. Errors raised in the C++ core arrive as these same classes.
"""

from __future__ import annotations


class LlmosError(Exception):
    """Base class of every llmos error."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        super().__init__(message)
        self.file = file
        self.field = field


class ModelFileError(LlmosError, OSError):
    """A model file is missing or cannot be read."""


class ModelFormatError(LlmosError):
    """A model file is present but malformed."""


class ConfigError(ModelFormatError):
    """config.json (or another JSON side file) is invalid or lacks a required field."""


class SafetensorsError(ModelFormatError):
    """A .safetensors file (or its index) breaks the format."""


class TensorError(ModelFormatError):
    """A tensor the architecture needs is missing, misshapen or of an unusable dtype."""


class UnsupportedModelError(LlmosError):
    """The checkpoint's model_type (or a feature of it) is not supported."""


class TokenizerError(ModelFormatError):
    """tokenizer.json / tokenizer_config.json cannot be loaded."""


class TokenizerFileMissingError(TokenizerError, ModelFileError):
    """tokenizer.json (or the tokenizer folder) is missing: both a tokenizer and a file error."""


class ChatTemplateError(LlmosError):
    """The chat template is missing, invalid, or raised an error while rendering."""


class InvalidInputError(LlmosError, ValueError):
    """A caller-supplied argument is out of range (token id, option value...)."""


class ContextLengthError(InvalidInputError):
    """The prompt (plus the tokens to generate) does not fit the model's context."""


class CancelledError(LlmosError):
    """A call was stopped by its ``llmos.CancelToken`` (Ctrl-C raises KeyboardInterrupt instead).
    The model stays usable: the next call gives what it gives on a freshly loaded model."""


class BusyError(LlmosError):
    """The engine's queue is full (max_waiting requests wait already); retry after
    ``retry_after`` seconds (a server answers 429 with that Retry-After)."""

    def __init__(self, message: str, *, retry_after: float = 1.0, field: str | None = None):
        super().__init__(message, field=field)
        self.retry_after = retry_after


class NumericalError(LlmosError):
    """The model computed NaN or infinity (``field`` says where, e.g. the logits of a decode
    step): the weights hold non-finite values or the activations overflowed the dtype.
    ``llmos verify`` finds non-finite weights."""


class ModelNotFoundError(LlmosError, KeyError):
    """No registry entry has this name (``suggestions`` holds the closest names)."""

    def __init__(self, message: str, *, suggestions: list[str] | None = None, **kw):
        super().__init__(message, **kw)
        self.suggestions = list(suggestions or [])

    # KeyError would print the message as a quoted repr.
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DownloadError(LlmosError):
    """A download from the Hugging Face Hub failed (repository, revision, network or server)."""


class IntegrityError(ModelFormatError):
    """A file's content does not match its recorded checksum or size."""


class DiskFullError(LlmosError, OSError):
    """The disk filled up while writing; whatever was half-written has been removed."""


class NotAvailableError(LlmosError):
    """The operation needs a part of llmos that is not installed (an optional extra: the
    message names the `pip install` that adds it)."""


class DeviceUnavailableError(NotAvailableError):
    """The device asked for (``device="cuda"`` / ``"cuda:N"``) cannot run this model here: the build
    has no CUDA, there is no driver or no such GPU, onnxruntime lacks its CUDA provider, or the
    model's backend does not run on the GPU in this release. The message says which."""


class DatasetError(InvalidInputError):
    """A training or evaluation dataset is malformed; ``file`` and ``line`` say where."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, field: str | None = None):
        super().__init__(message, file=file, field=field)
        self.line = line


class AdapterError(ModelFormatError):
    """A LoRA adapter is malformed or was trained for a different base model."""


class QuantizationWarning(UserWarning):
    """A quantized checkpoint (AWQ / GPTQ) has matrices that llmos's blocks cannot hold
    exactly; the message says which fallback was taken and its error bound."""


class AppFileError(InvalidInputError):
    """An app file (``NAME.app.md``) is malformed: ``file``, ``line`` (1-based, or None) and
    ``field`` (the front-matter key path, e.g. ``inputs.tone.type``) say where; the message reads
    ``{file}:{line}: {field}: {problem}``."""

    def __init__(self, problem: str, *, file: str | None = None, line: int | None = None, field: str | None = None):
        where = f"{file}:{line}" if line is not None else f"{file}"
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}", file=file, field=field)
        self.line = line
        self.problem = problem

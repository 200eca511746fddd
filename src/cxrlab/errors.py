"""Exceptions raised by cxrlab.

Every error a user can cause by bad input has its own class and a message that names
the file (and row or field) and the problem, so the user can act on it.
"""

from __future__ import annotations

from pathlib import Path


class CxrlabError(Exception):
    """Base class of every cxrlab error."""


class InputError(CxrlabError, ValueError):
    """Bad input named by its source (file, row, field).

    Args:
        source: The file (or ``file:row``) the problem was found in.
        problem: What is wrong, in words a user can act on.
    """

    def __init__(self, source: str | Path | None, problem: str) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)

    def __reduce__(self):
        # Rebuild from (source, problem) so errors cross process boundaries (workers).
        return (self.__class__, (self.source, self.problem))


class ImageReadError(InputError):
    """An image file is missing, empty, truncated, corrupt or not an image."""


class UnsupportedTransferSyntaxError(ImageReadError):
    """A DICOM file is compressed with a transfer syntax no installed codec decodes."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than the configured limit (checked before decoding)."""


class VolumeMismatchError(InputError):
    """Volumes that must share a grid (the modalities and label of one case) differ in shape or affine."""


class MissingFileError(InputError, FileNotFoundError):
    """A path named in a CSV, config or command line does not exist."""


class LabelValueError(InputError):
    """A label cell holds a value outside the dataset's vocabulary (CheXpert: 1, 0, -1, blank)."""


class CSVFormatError(InputError):
    """A CSV lacks a required column or cannot be parsed."""


class RLEError(InputError):
    """A run-length encoding is malformed or runs past the image."""


class CacheError(InputError):
    """A resolution cache is stale (built with other parameters or files) or corrupt."""


class ConfigError(InputError):
    """A recipe or override names an unknown key or holds an invalid value."""


class VolumeError(InputError):
    """A series of slices is inconsistent: mixed series in one folder, a slice of another
    size, duplicate or missing slice positions, or an array that is not (slices, H, W)."""


class ExamError(InputError):
    """An exam lacks one of its planes, or a label row names an exam without arrays."""


class WeightsUnavailableError(CxrlabError, RuntimeError):
    """Pretrained weights cannot be downloaded and no local file was given."""


class SkipLog:
    """Collects inputs skipped on purpose (``on_error="skip"``) so they can be reported.

    Readers call :meth:`handle` inside ``except InputError``: it re-raises when the
    policy is ``"raise"`` and otherwise records the skip. Nothing is skipped silently:
    :meth:`summary` lists the count and the first problems, and callers print it.

    Args:
        on_error: ``"raise"`` (default) or ``"skip"``.

    Example:
        >>> log = SkipLog("skip")
        >>> try:
        ...     raise ImageReadError("a.dcm", "file is empty (0 bytes)")
        ... except InputError as err:
        ...     log.handle(err)
        >>> log.count
        1
    """

    def __init__(self, on_error: str = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped: list[InputError] = []

    def handle(self, err: InputError) -> None:
        """Re-raise ``err`` under the ``raise`` policy, otherwise record it."""
        if self.on_error == "raise":
            raise err
        self.skipped.append(err)

    @property
    def count(self) -> int:
        return len(self.skipped)

    def summary(self, limit: int = 10) -> str:
        """One line with the count, then up to ``limit`` skipped items with their problem."""
        if not self.skipped:
            return "skipped 0 items"
        lines = [f"skipped {self.count} item(s):"]
        lines += [f"  {err}" for err in self.skipped[:limit]]
        if self.count > limit:
            lines.append(f"  ... and {self.count - limit} more")
        return "\n".join(lines)


class OnnxModelError(InputError):
    """An ONNX model file is missing, corrupt, or does not match the run it is used with."""

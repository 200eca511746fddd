"""The boundary between cxrlab and the third-party parsers and codecs that read image bytes.

pydicom, numpy, Pillow and the pylibjpeg codecs raise whatever their authors chose when
the bytes are bad: ``struct.error``, ``TypeError``, ``KeyError``, ``IndexError``,
``OverflowError``, pydicom's ``BytesLengthException``, and from the Rust codecs a
``pyo3_runtime.PanicException``, which derives from :class:`BaseException` so that
``except Exception`` does not stop it. :func:`decoding` wraps *only* the third-party calls
that read the bytes of one file and turns any of these into an
:class:`~cxrlab.errors.ImageReadError` naming the file and the step; cxrlab's own code
runs outside the ``with`` blocks, so its programming errors are never masked.

``MemoryError``, ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` pass through
unchanged: memory is bounded by checks made before each allocation, not by catching the
failure afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cxrlab.errors import CxrlabError, ImageReadError

_PASS_THROUGH = (MemoryError, KeyboardInterrupt, SystemExit, GeneratorExit)


def is_native_panic(err: BaseException) -> bool:
    """Whether ``err`` is a panic raised by a Rust extension (pyo3's ``PanicException``)."""
    kind = type(err)
    return kind.__name__ == "PanicException" and kind.__module__ in ("pyo3_runtime", "builtins")


@contextmanager
def decoding(path: str | Path, step: str, error: type[ImageReadError] = ImageReadError
             ) -> Iterator[None]:
    """Translate what a third-party parser or codec raises on bad bytes into ``error``.

    Args:
        path: The file being read (named in the message).
        step: What was being done, e.g. ``"cannot parse the DICOM header"``.
        error: The :class:`~cxrlab.errors.ImageReadError` subclass to raise.

    Raises:
        ImageReadError: ``"<path>: <step>: <exception type>: <message>"``; cxrlab errors
            raised inside pass through unchanged.

    Example:
        >>> with decoding("a.png", "cannot decode PNG"):  # doctest: +SKIP
        ...     image.load()
    """
    try:
        yield
    except CxrlabError:
        raise
    except _PASS_THROUGH:
        raise
    except Exception as err:  # noqa: BLE001 - third-party code on untrusted bytes
        raise error(path, f"{step}: {_describe(err, path)}") from err
    except BaseException as err:
        if not is_native_panic(err):
            raise
        raise error(path, f"{step}: the native decoder panicked ({_describe(err, path)})") from err


def _describe(err: BaseException, path: str | Path) -> str:
    """The exception's type and first lines; the file's full path (which the error already
    names) shortened to its name, so a service does not echo its spool folder."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = " ".join(lines[:4]).replace(str(path), Path(path).name)
    if len(text) > 400:
        text = text[:400] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__

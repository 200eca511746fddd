"""The dataset contract every source adapter implements, and the CSV helpers they share.

An adapter reads the files a public dataset ships and fills one table (one row per
image) plus aligned raw labels; this base class applies the label policy and provides
selection (:meth:`XrayDataset.subset`, :meth:`XrayDataset.filter_views`), study-level
labels and image / mask access through :mod:`cxrlab.io`.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from cxrlab.data.labels import (LabelPolicy, aggregate_by_study, apply_policy, count_labels,
                                parse_policies)
from cxrlab.errors import (ConfigError, CSVFormatError, ImageReadError, InputError,
                           MissingFileError, SkipLog)

#: Columns every ``XrayDataset.table`` has, in this order.
TABLE_COLUMNS = ("path", "patient_id", "study_id", "view", "frontal")
#: Spelling of split names across sources ("validate", "val" -> "valid").
SPLIT_NAMES = {"train": "train", "valid": "valid", "validate": "valid", "val": "valid",
               "validation": "valid", "test": "test"}

PolicyArg = LabelPolicy | Sequence[str] | None


def is_frontal_view(view: str) -> bool:
    """True for frontal projections: ``PA``, ``AP`` and their variants (``AP AXIAL``,
    ``PA LLD``...); False for laterals (``LATERAL``, ``LL``, ``RL``), obliques and blank."""
    view = view.strip().upper()
    return view in ("PA", "AP") or view.startswith(("PA ", "AP "))


def read_csv_table(path: str | Path, required: Sequence[str] = (), *,
                   header: int | None = 0) -> pd.DataFrame:
    """Read a CSV (plain or gzip, detected from its first bytes) as strings.

    Every cell is a ``str``; blank cells are ``""`` (nothing is turned into NaN).
    Column names are stripped of surrounding spaces.

    Args:
        path: The CSV file.
        required: Columns that must be present.
        header: Header row (``None`` for no header).

    Returns:
        The table, index ``0..N-1``; row ``k`` is line ``k + 2`` of the file when there
        is one header line.

    Raises:
        MissingFileError: The file does not exist.
        CSVFormatError: It cannot be parsed or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "CSV file does not exist")
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    options = dict(dtype=str, keep_default_na=False, header=header,
                   compression="gzip" if gzipped else None)
    try:
        try:  # pyarrow parses large CSVs several times faster
            table = pd.read_csv(path, engine="pyarrow", **options)
        except (ImportError, ValueError, pd.errors.ParserError):
            table = pd.read_csv(path, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            gzip.BadGzipFile, EOFError, OSError) as err:
        raise CSVFormatError(path, f"cannot be parsed as CSV: {err}") from err
    if header is not None:
        table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise CSVFormatError(path, f"missing required column(s) {', '.join(map(repr, missing))}"
                                   f"; found {', '.join(map(repr, table.columns))}")
    return table.reset_index(drop=True)


def report_bad_rows(bad: np.ndarray, message: Callable[[int], InputError], skips: SkipLog
                    ) -> np.ndarray:
    """Send one error per flagged row to ``skips``; return the mask of rows to keep.

    Args:
        bad: Boolean mask of bad rows.
        message: Row position -> the error describing it.
        skips: Raises the first error under ``on_error="raise"``, records them otherwise.
    """
    bad = np.asarray(bad, dtype=bool)
    for row in np.flatnonzero(bad):
        skips.handle(message(int(row)))
    return ~bad


def regex_groups(values: Sequence[str], pattern: str) -> dict[str, np.ndarray]:
    """Named groups of ``pattern`` searched in each string (pyarrow when installed).

    Args:
        values: Strings.
        pattern: A regular expression with named groups ``(?P<name>...)``.

    Returns:
        Group name -> ``object`` array of the matched text, ``None`` where the string
        does not match.
    """
    names = list(re.compile(pattern).groupindex)
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:
        compiled = re.compile(pattern)
        found = [compiled.search(v) for v in values]
        return {n: np.array([m.group(n) if m else None for m in found], dtype=object)
                for n in names}
    result = pc.extract_regex(pa.array(list(values), type=pa.string()), pattern)
    return {n: np.array(pc.struct_field(result, n).to_pylist(), dtype=object) for n in names}


def missing_files(paths: Sequence[str]) -> np.ndarray:
    """Boolean mask of ``paths`` that are not existing files."""
    return np.fromiter((not os.path.isfile(p) for p in paths), dtype=bool, count=len(paths))


def grouped_digests(keys: Sequence[Any], entries: pd.DataFrame, key_column: str) -> list[str]:
    """For each of ``keys``, a 16-hex-digit digest of the rows of ``entries`` whose
    ``key_column`` equals it (order-independent; ``""`` when there is none): what
    :meth:`XrayDataset.mask_records` returns for box or RLE mask sources."""
    digests: dict[Any, str] = {}
    if len(entries):
        for key, group in entries.groupby(key_column, sort=False):
            rows = sorted(group.drop(columns=[key_column]).astype(str)
                          .agg("\x1f".join, axis=1).tolist())
            digests[key] = hashlib.blake2b("\x1e".join(rows).encode(), digest_size=8).hexdigest()
    return [digests.get(key, "") for key in keys]


def boxes_mask(shape: tuple[int, int], x0: np.ndarray, y0: np.ndarray, x1: np.ndarray,
               y1: np.ndarray) -> np.ndarray:
    """Union of axis-aligned boxes as a bool ``(rows, cols)`` mask.

    Coordinates are pixel positions (x = column, y = row); a box covers the pixels from
    ``floor(x0)`` to ``ceil(x1)`` (exclusive), clipped to the image.
    """
    mask = np.zeros(shape, dtype=bool)
    rows, cols = shape
    for a, b, c, d in zip(np.atleast_1d(x0), np.atleast_1d(y0), np.atleast_1d(x1),
                          np.atleast_1d(y1)):
        c0, c1 = max(int(np.floor(a)), 0), min(int(np.ceil(c)), cols)
        r0, r1 = max(int(np.floor(b)), 0), min(int(np.ceil(d)), rows)
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = True
    return mask


def image_shape(path: str | Path) -> tuple[int, int]:
    """``(rows, cols)`` of an image from its header only (DICOM, PNG or JPEG).

    Raises:
        MissingFileError: The file does not exist.
        ImageReadError: The header cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "image file does not exist")
    with open(path, "rb") as handle:
        head = handle.read(132)
    if head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom"):
        import pydicom

        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return int(header.Rows), int(header.Columns)
        except (AttributeError, ValueError, TypeError, OSError,
                pydicom.errors.InvalidDicomError) as err:
            raise ImageReadError(path, f"DICOM header has no readable Rows/Columns: {err}"
                                 ) from err
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            cols, rows = image.size
    except (UnidentifiedImageError, OSError) as err:
        raise ImageReadError(path, f"not a readable image: {err}") from err
    return rows, cols


def resolve_policy(policy: PolicyArg, pathologies: Sequence[str]) -> LabelPolicy:
    """Accept a :class:`LabelPolicy`, ``None`` (U-Ignore) or ``"CLASS=policy"`` strings."""
    if policy is None:
        return LabelPolicy()
    if isinstance(policy, LabelPolicy):
        unknown = [name for name in policy.uncertain if name not in pathologies]
        if unknown:
            raise ConfigError(None, f"policy names unknown class(es) {', '.join(unknown)}; "
                                    f"classes are {', '.join(pathologies)}")
        return policy
    if isinstance(policy, str):
        policy = [policy]
    return parse_policies(policy, classes=pathologies)


class XrayDataset:
    """A chest radiograph dataset: one table row and one label row per image.

    Attributes:
        name: Registry name of the adapter.
        pathologies: Class names, the columns of the label arrays.
        table: One row per image with ``path`` (absolute str), ``patient_id`` (str),
            ``study_id`` (str), ``view`` (str: ``"PA"``, ``"AP"``, ``"LATERAL"``, ``""``...),
            ``frontal`` (bool); optionally ``mask_path``, ``weak`` (bool), ``split``
            (``"train"``, ``"valid"``, ``"test"``, ``""``) and source-specific columns.
        raw_labels: ``float32 [N, C]`` in {1, 0, -1, NaN} as the source gave them.
        labels: ``float32 [N, C]`` after the policy; NaN = unknown.
        policy: The :class:`~cxrlab.data.labels.LabelPolicy` applied.
        skips: Rows skipped while reading (``on_error="skip"``).
        source: The main file the dataset was read from (for messages).
    """

    name: ClassVar[str] = "base"

    @classmethod
    def path_options(cls) -> tuple[str, ...]:
        """The constructor's path-valued options, the main CSV first (recipes resolve these
        against the recipe's folder; commands check they exist)."""
        import inspect

        return tuple(key for key, param in inspect.signature(cls.__init__).parameters.items()
                     if "Path" in str(param.annotation))

    pathologies: list[str]
    table: pd.DataFrame
    raw_labels: np.ndarray
    labels: np.ndarray
    policy: LabelPolicy
    skips: SkipLog
    source: str

    def _setup(self, table: pd.DataFrame, raw_labels: np.ndarray, pathologies: Sequence[str],
               policy: PolicyArg, skips: SkipLog, source: str | Path) -> None:
        """Store the parsed table and labels and apply the policy (called by adapters)."""
        missing = [c for c in TABLE_COLUMNS if c not in table.columns]
        raw_labels = np.asarray(raw_labels, dtype=np.float32).reshape(len(table), len(pathologies))
        if missing:
            raise CSVFormatError(source, f"adapter table lacks column(s) {missing}")
        if len(table) == 0 and skips.count:
            # on_error="skip" that skipped everything is a wrong path or root, not data.
            first = skips.skipped[0]
            raise type(first)(source, f"every row was skipped ({skips.count} in all; the "
                                      f"first: {first}); check the root folder and the paths")
        table = table.reset_index(drop=True)
        for column in ("path", "patient_id", "study_id", "view"):
            table[column] = table[column].astype(str)
        table["frontal"] = table["frontal"].astype(bool)
        ordered = list(TABLE_COLUMNS) + [c for c in table.columns if c not in TABLE_COLUMNS]
        self.table = table[ordered]
        self.pathologies = list(pathologies)
        self.raw_labels = raw_labels
        self.policy = resolve_policy(policy, self.pathologies)
        self.labels = apply_policy(raw_labels, self.pathologies, self.policy)
        self.skips = skips
        self.source = str(source)

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={len(self)}, classes={len(self.pathologies)}, "
                f"source={self.source!r})")

    def pathology_index(self, pathology: str) -> int:
        """Column of ``pathology`` in the label arrays (ConfigError if unknown)."""
        try:
            return self.pathologies.index(pathology)
        except ValueError:
            raise ConfigError(None, f"{self.name}: unknown class {pathology!r}; classes are "
                                    f"{', '.join(self.pathologies)}") from None

    def image(self, i: int, **kwargs):
        """Read image ``i`` with :func:`cxrlab.io.read_image` (kwargs are passed on).

        Returns:
            :class:`cxrlab.io.XrayImage`.
        """
        from cxrlab.io import read_image

        return read_image(self.table.at[self._row(i), "path"], **kwargs)

    def mask(self, i: int, pathology: str | None = None) -> np.ndarray | None:
        """Mask of image ``i``: bool ``(H, W)`` in image orientation, or None if none.

        The base implementation reads ``table.mask_path`` (blank = no mask) with
        :func:`cxrlab.io.read_mask`; sources with boxes or RLE override it.
        """
        if pathology is not None:
            self.pathology_index(pathology)
        if "mask_path" not in self.table.columns:
            return None
        path = self.table.at[self._row(i), "mask_path"]
        if not path:
            return None
        from cxrlab.io import read_mask

        return read_mask(path)

    def has_masks(self) -> bool:
        """Whether this dataset has a mask source at all."""
        return "mask_path" in self.table.columns and bool((self.table["mask_path"] != "").any())

    def mask_records(self) -> list[str]:
        """One short string per image that changes whenever the source of its mask
        changes (a resolution cache keeps it beside the image file's size and mtime, so a
        corrected mask file, RLE or box is re-processed, never served stale).

        The base implementation records each ``mask_path`` file's size and ``mtime_ns``
        (``""`` without a mask, ``"missing"`` for a file that cannot be stat'ed); sources
        with boxes or RLE override it with a digest of the image's entries.
        """
        if "mask_path" not in self.table.columns:
            return [""] * len(self)
        records = []
        for path in self.table["mask_path"].tolist():
            if not path:
                records.append("")
                continue
            try:
                st = os.stat(path)
            except OSError:
                records.append("missing")
            else:
                records.append(f"{st.st_size}:{st.st_mtime_ns}")
        return records

    def subset(self, indices: Sequence[int] | np.ndarray) -> XrayDataset:
        """A dataset of the same class with the rows ``indices`` (int positions or a
        boolean mask), in that order; files are not read again."""
        index = np.asarray(indices)
        if index.dtype == bool:
            if len(index) != len(self):
                raise ConfigError(None, f"boolean subset of length {len(index)} for "
                                        f"{len(self)} rows")
            index = np.flatnonzero(index)
        index = index.astype(np.int64)
        new = copy.copy(self)
        new.table = self.table.iloc[index].reset_index(drop=True)
        new.raw_labels = self.raw_labels[index]
        new.labels = self.labels[index]
        return new

    def filter_views(self, frontal: bool | None = None,
                     views: Sequence[str] | None = None) -> XrayDataset:
        """Keep frontal (``frontal=True``) or non-frontal images, and/or the given views
        (case-insensitive, e.g. ``["PA"]``)."""
        keep = np.ones(len(self), dtype=bool)
        if frontal is not None:
            keep &= self.table["frontal"].to_numpy() == bool(frontal)
        if views is not None:
            wanted = {v.strip().upper() for v in views}
            keep &= self.table["view"].str.upper().isin(wanted).to_numpy()
        return self.subset(keep)

    def with_policy(self, policy: PolicyArg) -> XrayDataset:
        """The same rows with labels recomputed under another policy."""
        new = copy.copy(self)
        new.policy = resolve_policy(policy, self.pathologies)
        new.labels = apply_policy(self.raw_labels, self.pathologies, new.policy)
        return new

    def study_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """``aggregate_by_study(table.study_id, labels)``: ids ``[S]`` and labels ``[S, C]``."""
        return aggregate_by_study(self.table["study_id"].to_numpy(), self.labels)

    def label_counts(self, level: str = "image") -> dict[str, dict[str, int]]:
        """Per-class ``n`` / ``positive`` / ``negative`` (+ ``uncertain`` for multiclass
        classes) after the policy, counted per image or per study (``level="study"``).

        Raises:
            ConfigError: ``level`` is not ``"image"`` or ``"study"``.
        """
        if level == "image":
            labels = self.labels
        elif level == "study":
            labels = self.study_labels()[1]
        else:
            raise ConfigError(None, f"level must be 'image' or 'study', got {level!r}")
        return count_labels(labels, self.pathologies, self.policy)

    def _row(self, i: int) -> int:
        if not -len(self) <= int(i) < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        return int(i) % len(self)

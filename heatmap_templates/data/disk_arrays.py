"""Arrays kept in a file on disk and read by rows: decoded training images and pooled features of a
data set larger than the training memory budget.

A :class:`DiskArray` is a raw, C-ordered file of fixed-size rows, written once by appending and
then read by row (a slice, an index array in any order, or one index) with ``os.pread``: no memory
map, so the process holds only the rows it asked for, and threads can read concurrently. It looks
enough like a NumPy array (``len``, ``shape``, ``dtype``, ``arr[i:j]``, ``arr[indices]``) for the
training code to take either.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from heatmap_templates.files import write_fault


class DiskArray:
    """(N, *row_shape) rows of ``dtype`` in the file ``path``; :meth:`append` while writing, index to read."""

    def __init__(self, path: str | os.PathLike, row_shape: Sequence[int], dtype: np.dtype | type) -> None:
        self.path = Path(path)
        self.row_shape = tuple(int(v) for v in row_shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._rows = 0
        try:
            self.path.write_bytes(b"")
        except OSError as error:
            raise write_fault(self.path, error) from None

    def __len__(self) -> int:
        return self._rows

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._rows, *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def nbytes(self) -> int:
        return self._rows * self.row_bytes

    def append(self, rows: np.ndarray) -> None:
        """Write rows (n, *row_shape) at the end of the file."""
        values = np.ascontiguousarray(rows, dtype=self.dtype)
        if values.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {values.shape[1:]} do not fit a disk array of rows {self.row_shape}")
        try:
            with open(self.path, "ab") as handle:
                handle.write(values.tobytes())
        except OSError as error:
            raise write_fault(self.path, error) from None
        self._rows += len(values)

    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._read(np.array([int(key)]))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(self._rows)
            if step == 1:
                return self._read_span(start, max(start, stop))
            return self._read(np.arange(start, stop, step))
        return self._read(np.asarray(key, dtype=np.int64))

    def _read_span(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) in one read."""
        out = np.empty((stop - start, *self.row_shape), self.dtype)
        if stop > start:
            descriptor = os.open(self.path, os.O_RDONLY)
            try:
                data = os.pread(descriptor, (stop - start) * self.row_bytes, start * self.row_bytes)
            finally:
                os.close(descriptor)
            out[...] = np.frombuffer(data, self.dtype).reshape(out.shape)
        return out

    def _read(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (any order, repeats allowed), one read per row."""
        if len(indices) and (indices.min() < -self._rows or indices.max() >= self._rows):
            raise IndexError(f"{self.path}: row index out of range for {self._rows} rows")
        out = np.empty((len(indices), *self.row_shape), self.dtype)
        descriptor = os.open(self.path, os.O_RDONLY)
        try:
            for position, row in enumerate(indices % max(self._rows, 1)):
                data = os.pread(descriptor, self.row_bytes, int(row) * self.row_bytes)
                out[position] = np.frombuffer(data, self.dtype).reshape(self.row_shape)
        finally:
            os.close(descriptor)
        return out

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        values = self._read_span(0, self._rows)
        return values if dtype is None else values.astype(dtype)

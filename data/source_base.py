"""What every image source is (`Source`, its files, `SourceError`, the dataset names) and the
readers that stream its images from arrays, .npz members and files."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import numpy as np

OTHER_DATASETS = ("camelyon17", "fashionmnist", "digits", "imagefolder", "csv")


OWN_DATASETS = ("imagefolder", "csv")  # a site's own images (data/own_data.py)


class SourceError(ValueError):
    """Bad dataset input; the message names the flag or the file and what is wrong."""


# What a Reader returns for rows [lo, hi): decoded arrays (one array, or one per image) or the
# bytes of image files.
Images = Sequence[np.ndarray | bytes] | np.ndarray


class Reader(Protocol):
    """Reads the images [lo, hi) of one database file; calls come in increasing order."""

    def __len__(self) -> int: ...

    def read(self, lo: int, hi: int) -> Images: ...

    def close(self) -> None: ...


@dataclass
class OutputFile:
    """One database file to write: its labels and metadata, and the reader of its images."""

    name: str
    labels: np.ndarray
    metadata: np.ndarray
    metadata_fields: tuple[str, ...]
    reader: Reader
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Source:
    """A dataset ready to encode: class names, task, native image size and the files to write."""

    dataset: str
    task: str
    classes: list[str]
    source_size: int
    files: list[OutputFile]
    info: dict = field(default_factory=dict)

    def close(self) -> None:
        for f in self.files:
            f.reader.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArrayReader:
    """Rows of an in-memory or memory-mapped array; `read` copies only the rows asked for."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def read(self, lo: int, hi: int) -> np.ndarray:
        return np.array(self.array[lo:hi])

    def close(self) -> None:
        mm = getattr(self.array, "_mmap", None)
        self.array = self.array[:0]
        if mm is not None:
            mm.close()


@dataclass(frozen=True)
class NpyMember:
    """Where and how an array is stored inside an `.npz` (zip) file."""

    path: Path
    key: str
    dtype: np.dtype
    shape: tuple[int, ...]
    compressed: bool
    header_len: int  # bytes of the .npy header at the start of the member
    data_offset: int  # byte offset of the array data in the .npz file (stored members only)


def npz_member(path: str | Path, key: str) -> NpyMember:
    """Read the header of array `key` in an `.npz` file without reading its data."""
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        try:
            info = zf.getinfo(f"{key}.npy")
        except KeyError:
            raise SourceError(f"{path}: no array '{key}' in the file") from None
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise SourceError(f"{path}: array '{key}' has unsupported .npy version {version}")
            header_len = fh.tell()
        with path.open("rb") as raw:
            # The local file header is 30 bytes plus the name and extra fields (their lengths
            # at bytes 26-29); the member's bytes follow it.
            raw.seek(info.header_offset + 26)
            lengths = np.frombuffer(raw.read(4), dtype="<u2")
        local_data = info.header_offset + 30 + int(lengths[0]) + int(lengths[1])
    if fortran and len(shape) > 1:
        raise SourceError(f"{path}: array '{key}' is stored in Fortran order; expected C order")
    if dtype.hasobject:
        raise SourceError(f"{path}: array '{key}' holds Python objects; expected numbers")
    return NpyMember(
        path=path,
        key=key,
        dtype=dtype,
        shape=tuple(shape),
        compressed=info.compress_type != zipfile.ZIP_STORED,
        header_len=header_len,
        data_offset=local_data + header_len,
    )


class NpyStreamReader:
    """Rows of a compressed `.npz` member, inflated sequentially; only the rows read are in RAM."""

    def __init__(self, member: NpyMember):
        self.member = member
        self.row_bytes = int(np.prod(member.shape[1:], dtype=np.int64)) * member.dtype.itemsize
        self._zip: zipfile.ZipFile | None = None
        self._fh: IO[bytes] | None = None
        self.position = 0  # next row the stream will return

    def __len__(self) -> int:
        return self.member.shape[0]

    def _reopen(self) -> None:
        self.close()
        self._zip = zipfile.ZipFile(self.member.path)
        self._fh = self._zip.open(f"{self.member.key}.npy")
        self._read_exact(self.member.header_len)  # skip the .npy header
        self.position = 0

    def _read_exact(self, n_bytes: int) -> bytes:
        if self._fh is None:  # `_reopen` opens it
            raise RuntimeError(f"{self.member.path}: array '{self.member.key}' is not open")
        try:
            data = self._fh.read(n_bytes)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise SourceError(
                f"{self.member.path}: array '{self.member.key}' is corrupt ({err})"
            ) from None
        if len(data) != n_bytes:
            raise SourceError(f"{self.member.path}: array '{self.member.key}' is truncated")
        return data

    def read(self, lo: int, hi: int) -> np.ndarray:
        if not 0 <= lo <= hi <= len(self):
            raise IndexError(f"rows [{lo}, {hi}) out of range for {len(self)} rows")
        if self._fh is None or lo < self.position:
            self._reopen()
        skip = lo - self.position
        while skip > 0:  # discard rows before lo in bounded pieces
            step = min(skip, max(1, (64 << 20) // max(1, self.row_bytes)))
            self._read_exact(step * self.row_bytes)
            skip -= step
        data = self._read_exact((hi - lo) * self.row_bytes)
        self.position = hi
        return np.frombuffer(data, dtype=self.member.dtype).reshape(
            (hi - lo, *self.member.shape[1:])
        )

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def open_npz_array(path: str | Path, key: str) -> ArrayReader | NpyStreamReader:
    """Reader of array `key` in an `.npz`: memory-mapped when stored, streamed when compressed."""
    member = npz_member(path, key)
    if member.compressed:
        return NpyStreamReader(member)
    if member.shape[0] == 0:
        return ArrayReader(np.zeros(member.shape, dtype=member.dtype))
    array = np.memmap(
        member.path, dtype=member.dtype, mode="r", offset=member.data_offset, shape=member.shape
    )
    return ArrayReader(array)


class ConcatReader:
    """Several readers one after the other, as one."""

    def __init__(self, readers: Sequence[Reader]):
        self.readers = list(readers)
        self.starts = np.cumsum([0] + [len(r) for r in self.readers])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, lo: int, hi: int) -> list[np.ndarray | bytes]:
        out: list[np.ndarray | bytes] = []
        for reader, start in zip(self.readers, self.starts[:-1]):
            a, b = max(lo, start), min(hi, start + len(reader))
            if a < b:
                out.extend(reader.read(int(a - start), int(b - start)))
        return out

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


class NamedBytes(bytes):
    """The bytes of an image file, with its path for error messages."""

    path: Path


class FileBytesReader:
    """The raw bytes of image files (decoded later, in the worker threads)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, lo: int, hi: int) -> list[bytes]:
        out: list[bytes] = []
        for path in self.paths[lo:hi]:
            try:
                data = NamedBytes(path.read_bytes())
            except OSError as err:
                raise SourceError(f"{path}: cannot read image file ({err})") from None
            data.path = path
            out.append(data)
        return out

    def close(self) -> None:
        pass


def parse_s_frac(value: float) -> float:
    """Check an `--s_frac` value: a fraction in (0, 1] or a whole count > 1."""
    if not np.isfinite(value) or value <= 0:
        raise SourceError(f"--s_frac {value}: must be a fraction in (0, 1] or a count > 1")
    if value > 1 and value != int(value):
        raise SourceError(f"--s_frac {value}: a count (> 1) must be a whole number")
    return float(value)

"""The encoding pipeline of create_db.py: image batches prepared ahead in threads, embedded by
the backbone, and saved in chunks that a resumed run reuses (when its plan, `encoding_plan`,
is the same)."""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from data.backbone import Backbone, fetch
from data.database import DatabaseError
from data.source_base import Images, Source, SourceError
from utils.io import save_npz
from utils.progress import progress as progress_bar

T = TypeVar("T")  # a job's tag


def _prepare_when_read(raw: Future, prepare: Callable[[Images], np.ndarray]) -> np.ndarray:
    return prepare(raw.result())


def prepared_batches(
    jobs: Iterable[tuple[T, Callable[[], Images]]],
    prepare: Callable[[Images], np.ndarray],
    num_workers: int,
) -> Iterator[tuple[T, np.ndarray]]:
    """Yield (tag, prepare(read())) for each (tag, read) job, in order.

    One thread calls the `read`s in order (streams must be read sequentially); `num_workers`
    threads run `prepare` (decode, resize, crop: PIL releases the GIL) on up to
    2 * num_workers + 2 batches ahead of the consumer. 0 workers: all in the calling thread.
    """
    if num_workers <= 0:
        for tag, read in jobs:
            yield tag, prepare(read())
        return
    depth = 2 * num_workers + 2
    reader = ThreadPoolExecutor(1, thread_name_prefix="create_db-read")
    pool = ThreadPoolExecutor(num_workers, thread_name_prefix="create_db-prepare")
    pending: deque[tuple[T, Future]] = deque()
    try:
        for tag, read in jobs:
            raw = reader.submit(read)
            pending.append((tag, pool.submit(_prepare_when_read, raw, prepare)))
            if len(pending) >= depth:
                tag0, fut = pending.popleft()
                yield tag0, fut.result()
        while pending:
            tag0, fut = pending.popleft()
            yield tag0, fut.result()
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)


def ranges(n: int, step: int, start: int = 0) -> list[tuple[int, int]]:
    """[(lo, hi), ...] covering [start, n) in steps of `step`."""
    return [(lo, min(lo + step, n)) for lo in range(start, n, step)]


def embed_batches(
    source: Source,
    backbone: Backbone,
    batches: Sequence[tuple[int, int, int]],
    num_workers: int,
) -> Iterator[tuple[tuple[int, int, int], np.ndarray]]:
    """Embed (file index, lo, hi) batches of a source in order, images prepared by workers.

    Each batch's forward pass is queued before the previous batch's result is read back, so a
    GPU never waits for the Python side between batches (on a CPU this changes nothing)."""
    jobs = [
        (b, (lambda r=source.files[b[0]].reader, lo=b[1], hi=b[2]: r.read(lo, hi))) for b in batches
    ]
    stream = prepared_batches(jobs, backbone.prepare_batch, num_workers)
    pending = None  # (tag, output on the device) of the batch before
    for fi, lo, hi in batches:  # the stream yields in this order, so a failure is this batch's
        try:
            tag, batch = next(stream)
        except (OSError, ValueError) as err:
            if pending is not None:  # the batch before is complete: deliver it first
                yield pending[0], fetch(pending[1])
            if isinstance(err, SourceError):
                raise
            raise SourceError(
                f"{source.dataset} file '{source.files[fi].name}', images {lo}..{hi - 1}: "
                f"cannot read or decode ({err})"
            ) from err
        out = backbone.forward(backbone.to_input(batch))
        if pending is not None:
            yield pending[0], fetch(pending[1])
        pending = (tag, out)
    if pending is not None:
        yield pending[0], fetch(pending[1])


def chunk_path(work: Path, name: str, k: int) -> Path:
    return work / f"{name}.{k:06d}.npz"


def encode_source(
    *,
    source: Source,
    backbone: Backbone,
    work: Path,
    batch_size: int,
    chunk_rows: int,
    num_workers: int,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Embeddings of every file of `source`, computed chunk by chunk.

    Each finished chunk is saved atomically under `work`; chunks already there are reused, so an
    interrupted run resumes where it stopped. `chunk_rows` is a multiple of `batch_size`, so the
    batches are the same with or without interruption.

    Args:
        source: the images, file by file.
        backbone: the frozen model that embeds them.
        work: the folder of the finished chunks.
        batch_size: images per forward pass.
        chunk_rows: images per saved chunk (a multiple of `batch_size`).
        num_workers: threads preparing images ahead.
        progress: whether to show a progress bar.
    """
    todo = []
    for fi, f in enumerate(source.files):
        for k, (lo, hi) in enumerate(ranges(len(f), chunk_rows)):
            if not chunk_path(work, f.name, k).is_file():
                todo.append((fi, k, lo, hi))
    batches = [(fi, a, b) for fi, _, lo, hi in todo for a, b in ranges(hi, batch_size, lo)]
    chunk_end = {(fi, hi): (k, lo) for fi, k, lo, hi in todo}
    total = sum(hi - lo for _, _, lo, hi in todo)
    done = sum(len(f) for f in source.files) - total
    bar = progress_bar(
        total=total, unit="img", desc=f"encode {source.dataset}", disable=not progress
    )
    if done and progress:
        print(f"resuming: {done} images already encoded in {work}", file=sys.stderr)
    parts: list[np.ndarray] = []
    with bar:
        for (fi, _, b), emb in embed_batches(source, backbone, batches, num_workers):
            parts.append(emb)
            bar.update(len(emb))
            if (fi, b) in chunk_end:
                k, lo = chunk_end[(fi, b)]
                rows = np.array([lo, b], dtype=np.int64)
                path = chunk_path(work, source.files[fi].name, k)
                save_npz(path, embeddings=np.concatenate(parts), rows=rows)
                parts = []

    out = {}
    for f in source.files:
        pieces = []
        for k, (lo, hi) in enumerate(ranges(len(f), chunk_rows)):
            path = chunk_path(work, f.name, k)
            with np.load(path, allow_pickle=False) as npz:
                emb, rows = npz["embeddings"], npz["rows"]
            if list(rows) != [lo, hi] or emb.shape != (hi - lo, backbone.embedding_dim):
                raise DatabaseError(
                    f"{path}: chunk holds rows {list(rows)} x {emb.shape[1:]}, expected "
                    f"[{lo}, {hi}] x ({backbone.embedding_dim},); rerun with --overwrite"
                )
            pieces.append(emb)
        out[f.name] = np.concatenate(pieces).astype(np.float32, copy=False)
    return out


def _rows_digest(source: Source) -> str:
    """Identity of the samples to encode (labels and metadata of every file, in order)."""
    h = hashlib.sha256()
    for f in source.files:
        h.update(f.name.encode())
        h.update(np.ascontiguousarray(f.labels).tobytes())
        h.update(np.ascontiguousarray(f.metadata).tobytes())
    return h.hexdigest()


def encoding_plan(
    args: argparse.Namespace, source: Source, backbone: Backbone, chunk_rows: int
) -> dict:
    """Everything that determines the chunks' content (plan.json, and meta.json's `plan`); a
    resumed run must match it."""
    return {
        "dataset": source.dataset,
        "source_size": source.source_size,
        "source_file": source.info.get("source_file"),
        "s_frac": args.s_frac,
        "seed": args.seed,
        "backbone": backbone.name,
        "weights": backbone.weights,
        "weights_sha256": backbone.weights_sha256,
        "device": backbone.device.type,
        "batch_size": args.batch_size,
        "chunk_rows": chunk_rows,
        "files": {f.name: len(f) for f in source.files},
        "rows_sha256": _rows_digest(source),
    }

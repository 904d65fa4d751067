"""A branch that streams its split from storage with bounded memory (``train.data: stream``).

Training, epoch ``e``: every (file, Parquet row group) of the split in an
order drawn from (seed, k, e) -- row groups of different files interleave,
because a file holds a contiguous range of the source, which for a
class-sorted source (an image folder) spans only a few classes -- read one
row group at a time on a background thread (``PREFETCH_ROW_GROUPS`` ahead,
``OPEN_FILES`` kept open) and mixed by a shuffle buffer: rows accumulate until
``shuffle_buffer`` of them are held, are permuted, and all but half a buffer
are emitted as batches. Every draw comes from one numpy generator seeded by
(seed, k, e) on the consuming thread, and the reader thread only fetches in
that fixed order, so an epoch's batches are a function of (seed, branch,
epoch) whatever the timing: a resumed run replays the same steps. Memory:
about ``shuffle_buffer`` + ``PREFETCH_ROW_GROUPS`` row groups of stored
values, whatever the split's size. Batches move to the device as stored (on CUDA through pinned memory,
non_blocking) and are decoded there (``_data.Decoder``).

Outages: every read (a footer, a row group) is retried within ``storage.retry_budget_s`` on a freshly
opened file (``RunStorage.read_with``); past the budget the ``StorageError`` is raised by the reader
thread and surfaces in the training loop at the row group it was reading. When the consumer stops
(an error, a NaN, the end of an evaluation), the reader is told to stop too: a read still retrying gives up
at its next backoff instead of holding the loop for another budget.

Evaluation reads the files in manifest order without shuffling; ``idx``,
``src`` and ``y`` (a few bytes per row) are read up front so the caller can
align the logits.
"""

from __future__ import annotations

import threading
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import torch

from branches.data import EVAL_BATCH_SIZE, Augmenter, Decoder, augment_generator
from data_split import layout
from data_split.manifest import Manifest, ManifestError
from data_split.quantize import branch_codec
from data_split.shards import scatter, table_arrays
from data_split.storage import RunStorage

PREFETCH_ROW_GROUPS = 2  # row groups read ahead of the consumer on the background thread
OPEN_FILES = 8  # Parquet files kept open by the prefetch thread (an S3 open costs a footer read)


def readonly_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``a``'s memory, also when ``a`` is a read-only view of an Arrow buffer (storage version 3).

    Nothing writes it: the decoder and the host-to-device copy make new tensors.
    """
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host batch on ``device``; to CUDA through pinned memory with a ``non_blocking`` copy, so the copy overlaps
    the previous step's kernels (the caching host allocator keeps the pinned block until the copy is done)."""
    t = readonly_tensor(a)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def epoch_rng(seed: int, k: int, epoch: int) -> np.random.Generator:
    """The streaming order's generator of one (branch, epoch)."""
    return np.random.default_rng(np.random.SeedSequence([(seed + k) % 2**63, epoch, 1]))


class StreamingSplit:
    """One split of branch ``k``, read from storage row group by row group."""

    def __init__(
        self,
        storage: RunStorage,
        manifest: Manifest,
        split: str,
        k: int,
        device: torch.device,
        *,
        shuffle_buffer: int = 8192,
    ) -> None:
        try:
            entry = manifest.branches[k].splits[split]
        except (IndexError, KeyError):
            raise ManifestError(f"{storage.url(layout.MANIFEST)} has no branch {k} split {split!r}") from None
        self.storage, self.files, self.rows = storage, list(entry.files), int(entry.rows)
        self.shape = manifest.split.shape
        self.dtype = branch_codec(manifest, k)[0]
        self.device, self.shuffle_buffer = device, shuffle_buffer
        self.decode = Decoder(manifest, k, device)
        self.augment: Augmenter | None = None  # set by the training loop for the train split
        self._groups: dict[str, int] = {}
        self._labels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._open: dict[str, tuple] = {}  # rel -> (file, ParquetFile), of the prefetch thread only
        self._stop = threading.Event()  # set when the consumer of _prefetched is gone

    def __len__(self) -> int:
        return self.rows

    # -- reading ------------------------------------------------------------------------------------------
    def _row_groups(self, rel: str) -> int:
        if rel not in self._groups:
            self._groups[rel] = self.storage.read_with(rel, lambda f: pq.ParquetFile(f).num_row_groups)
        return self._groups[rel]

    def _prefetched(self, units: list[tuple[str, int]]) -> Iterator[tuple]:
        """Row groups ``(file, group)`` in order, read ``PREFETCH_ROW_GROUPS`` ahead on a background thread."""
        self._stop.clear()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="branch-prefetch") as pool:
            pending: deque[Future] = deque()
            it = iter(units)

            def submit() -> None:
                unit = next(it, None)
                if unit is not None:
                    pending.append(pool.submit(self._read_one, *unit))

            for _ in range(PREFETCH_ROW_GROUPS + 1):
                submit()
            try:
                while pending:
                    out = pending.popleft().result()
                    submit()
                    yield out
            finally:
                self._stop.set()  # a read still retrying gives up at its next backoff
                for fut in pending:
                    fut.cancel()
                pool.submit(self._close).result()

    def _read_one(self, rel: str, g: int) -> tuple:
        """(idx, src, y, x stored) of row group ``g`` of ``rel``; the file stays open for its next row group.

        Runs on the single prefetch thread only, so ``_open`` needs no lock. A failed read drops the file,
        and the retry opens it afresh (a connection broken mid-read leaves a file object in an unknown state).
        """

        def attempt() -> tuple:
            f, parquet = self._open.pop(rel, (None, None))
            try:
                if f is None:
                    if len(self._open) >= OPEN_FILES - 1:
                        self._open.pop(next(iter(self._open)))[0].close()
                    f = self.storage.open_read(rel)
                    parquet = pq.ParquetFile(f)
                table = parquet.read_row_group(g)
            except Exception:
                if f is not None:
                    f.close()
                raise
            self._open[rel] = (f, parquet)  # most recently used last
            return table

        table = self.storage.retrying(f"read row group {g} of {self.storage.url(rel)}", attempt, stop=self._stop)
        return table_arrays(table, self.shape, self.dtype, self.storage.url(rel))

    def _close(self) -> None:
        for f, _ in self._open.values():
            f.close()
        self._open.clear()

    # -- training -----------------------------------------------------------------------------------------
    def epoch_plan(self, seed: int, k: int, epoch: int) -> tuple[list[tuple[str, int]], np.random.Generator]:
        """The seeded order of every (file, row group), and the generator that then shuffles rows."""
        rng = epoch_rng(seed, k, epoch)
        units = [(rel, g) for rel in self.files for g in range(self._row_groups(rel))]
        return [units[i] for i in rng.permutation(len(units))], rng

    def train_batches(
        self, seed: int, k: int, epoch: int, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's ``(x, y)`` batches on the device: a function of (seed, k, epoch)."""
        plan, rng = self.epoch_plan(seed, k, epoch)
        gen = augment_generator(seed, k, epoch)
        held_x: list[np.ndarray] = []
        held_y: list[np.ndarray] = []
        n_held = 0
        for _, _, y, x in self._prefetched(plan):
            held_x.append(x)
            held_y.append(y)
            n_held += len(y)
            if n_held >= self.shuffle_buffer + batch_size:
                xs, ys = self._mix(held_x, held_y, rng)
                emit = (n_held - self.shuffle_buffer // 2) // batch_size * batch_size
                yield from self._batches(xs[:emit], ys[:emit], batch_size, gen)
                held_x, held_y, n_held = [xs[emit:]], [ys[emit:]], n_held - emit
        if n_held:
            xs, ys = self._mix(held_x, held_y, rng)
            yield from self._batches(xs, ys, batch_size, gen, last=True)

    def _mix(
        self, xs: list[np.ndarray], ys: list[np.ndarray], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The held rows in a random order: ``concatenate(xs)[order]``, copied once (``scatter``)."""
        y = np.concatenate(ys)
        order = rng.permutation(len(y))
        return scatter(xs, order, self.shape, self.dtype), y[order]

    def _batches(self, x: np.ndarray, y: np.ndarray, batch_size: int, gen: torch.Generator, last: bool = False):
        starts = list(range(0, len(y), batch_size))
        if last and len(starts) > 1 and len(y) - starts[-1] == 1:  # BatchNorm cannot train on a single sample
            starts.pop()
        for i, s in enumerate(starts):
            e = starts[i + 1] if i + 1 < len(starts) else len(y)
            yield self.decode(to_device(x[s:e], self.device), self.augment, gen), to_device(y[s:e], self.device)

    # -- evaluation ---------------------------------------------------------------------------------------
    def _eval_labels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._labels is None:
            parts = [
                self.storage.read_with(rel, lambda f: pq.read_table(f, columns=["idx", "src", "y"]))
                for rel in self.files
            ]

            def cat(name: str, dt) -> np.ndarray:
                return (
                    np.concatenate([p.column(name).to_numpy() for p in parts]).astype(dt) if parts else np.zeros(0, dt)
                )

            self._labels = (cat("idx", np.int64), cat("src", np.int16), cat("y", np.int64))
            if len(self._labels[0]) != self.rows:
                raise ManifestError(
                    f"{self.storage.url(self.files[0] if self.files else layout.DATA)}: files hold "
                    f"{len(self._labels[0])} rows, the manifest says {self.rows}"
                )
        return self._labels

    @property
    def idx(self) -> np.ndarray:
        return self._eval_labels()[0]

    @property
    def src(self) -> np.ndarray:
        return self._eval_labels()[1]

    @property
    def y_np(self) -> np.ndarray:
        return self._eval_labels()[2]

    @property
    def y(self) -> torch.Tensor:
        return torch.from_numpy(self.y_np).to(self.device)

    def eval_batches(self) -> Iterator[torch.Tensor]:
        """Normalised inputs in file order (that of ``idx``/``y``); one empty batch for an empty split."""
        units = [(rel, g) for rel in self.files for g in range(self._row_groups(rel))]
        empty = True
        for _, _, _, x in self._prefetched(units):
            for s in range(0, len(x), EVAL_BATCH_SIZE):
                empty = False
                yield self.decode(to_device(x[s : s + EVAL_BATCH_SIZE], self.device))
        if empty:
            yield self.decode(torch.zeros((0, *self.shape), dtype=getattr(torch, self.dtype), device=self.device))

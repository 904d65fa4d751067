"""A branch's data on its device: stored values in, decoded and normalised batches out.

The sub-datasets hold ``split.dtype`` values (uint8 codes by default); they
go to the device as stored (4x smaller than float32 for uint8) and each batch
is decoded there with ``data_split.quantize.decode`` and normalised with the
manifest's per-channel mean/std, so a branch's input is float32
``(B, C, h, w)`` whatever the storage.

``InMemorySplit``: the whole split on the device, rows in ascending
``(src, idx)`` order; the batch order of an epoch is ``batch_indices(...)``
of ``epoch_generator(seed, k, epoch)``, a function of (seed, branch, epoch).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from branches.modes import choose_mode, in_memory_bytes  # noqa: F401  (re-exported: the loop's names)
from data_split.augment import SYMMETRIES, branch_signs, image_op, translate
from data_split.manifest import Manifest
from data_split.quantize import branch_codec, decode
from data_split.shards import read_branch
from data_split.storage import RunStorage

MIN_STD = 1e-6  # clamp of the per-channel std used to normalise (a constant channel would divide by 0)
EVAL_BATCH_SIZE = 1024  # rows per forward pass when computing val/test logits


def epoch_generator(seed: int, k: int, epoch: int) -> torch.Generator:
    """The batch-order generator of one (branch, epoch): independent of every other RNG."""
    state = np.random.SeedSequence([(seed + k) % 2**63, epoch]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled partition of ``range(n)`` into batches; a trailing batch of 1 joins the previous one."""
    chunks = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:  # BatchNorm cannot train on a single sample
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


class Decoder:
    """Stored values of branch ``k`` -> normalised float32, on ``device`` (one per branch)."""

    def __init__(self, manifest: Manifest, k: int, device: torch.device) -> None:
        self.dtype, offset, scale = branch_codec(manifest, k)
        as_t = lambda v: None if v is None else torch.as_tensor(v, dtype=torch.float32, device=device)  # noqa: E731
        self.offset, self.scale = as_t(offset), as_t(scale)
        b = manifest.branches[k]
        self.mean = torch.as_tensor(b.mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)  # (1, C, 1, 1)
        self.std = torch.as_tensor(np.maximum(np.asarray(b.std, np.float32), MIN_STD), device=device).reshape(
            1, -1, 1, 1
        )

    def __call__(
        self, stored: torch.Tensor, augment: Augmenter | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, C, h, w) stored dtype on the device -> (B, C, h, w) float32 normalised (augmented first, if asked)."""
        values = decode(stored, self.dtype, self.offset, self.scale)
        if augment is not None:
            values = augment(values, generator)
        return (values - self.mean) / self.std


class Augmenter:
    """``train.augment`` for branch ``k``: exact symmetries (with the branch's sign) and the sub-pixel crop, on values.

    ``data_split.augment.check_augment`` has refused inexact names before this is built. Every draw comes
    from the caller's generator, one per (seed, k, epoch), so a resumed epoch augments the same way.
    """

    def __init__(self, names: list[str], manifest: Manifest, k: int, pad: int) -> None:
        t, r, c = np.asarray(manifest.split.matrix), manifest.split.r, manifest.split.c
        self.flips = [(n, float(branch_signs(n, t, r, c)[k])) for n in names if n in SYMMETRIES]
        self.pad = pad if "crop" in names else 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x (B, C, h, w) float32 values (not normalised: a zero pixel is 0 in every branch) -> augmented copy."""
        x = x.clone()
        for name, sign in self.flips:
            mask = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
            x[mask] = sign * image_op(name, x[mask])
        if self.pad:
            shifts = torch.randint(-self.pad, self.pad + 1, (len(x), 2), generator=generator)
            out = torch.empty_like(x)
            for dy, dx in {tuple(v) for v in shifts.tolist()}:
                rows = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).to(x.device)
                out[rows] = translate(x[rows], dy, dx)
            x = out
        return x


def augment_generator(seed: int, k: int, epoch: int) -> torch.Generator:
    """The augmentation draws of one (branch, epoch), independent of the batch order's."""
    state = np.random.SeedSequence([(seed + k) % 2**63, epoch, 2]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class InMemorySplit:
    """One split of branch ``k``, all rows on the device as stored."""

    def __init__(self, storage: RunStorage, manifest: Manifest, split: str, k: int, device: torch.device) -> None:
        data = read_branch(storage, manifest, split, k)
        self.idx, self.src, self.y_np = data.idx, data.src, data.y
        self.y = torch.from_numpy(data.y).to(device)
        self.stored = torch.from_numpy(np.ascontiguousarray(data.x)).to(device)
        self.decode = Decoder(manifest, k, device)
        self.augment: Augmenter | None = None  # set by the training loop for the train split

    def __len__(self) -> int:
        return len(self.idx)

    def train_batches(
        self, seed: int, k: int, epoch: int, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's ``(x, y)`` batches, in the order fixed by (seed, k, epoch)."""
        gen = augment_generator(seed, k, epoch)
        for rows in batch_indices(len(self), batch_size, epoch_generator(seed, k, epoch)):
            rows = rows.to(self.stored.device)
            yield self.decode(self.stored[rows], self.augment, gen), self.y[rows]

    def eval_batches(self) -> Iterator[torch.Tensor]:
        """Normalised inputs in row order, ``EVAL_BATCH_SIZE`` at a time (one empty batch for an empty split)."""
        for stored in self.stored.split(EVAL_BATCH_SIZE):
            yield self.decode(stored)


class PackedTrainRows:
    """The training rows of a pack's members stacked ``(P, N, C, h, w)`` on the device: each step's P batches in
    one gather and one decode, instead of P of each (per step, the cost of a small pack's many members).

    Every member keeps its own batch order (``batch_indices`` of its ``epoch_generator(seed, k, epoch)``), codec
    and normalisation, applied with the same operations in the same order as ``Decoder``, so a member's batch is
    bitwise the one its ``InMemorySplit.train_batches`` yields. Members need equal row counts (a pack's do) and
    no ``train.augment`` (its draws are per member: such a pack takes each member's own ``train_batches``).
    ``drop(positions)``: members leave, also in the middle of an epoch; the others' batches go on unchanged.
    """

    def __init__(self, splits: list[InMemorySplit], ks: list[int]) -> None:
        if len({len(s) for s in splits}) != 1:
            raise ValueError(f"packed rows need equal row counts, got {[len(s) for s in splits]}")
        self.ks, self.n = list(ks), len(splits[0])
        self.stored = torch.stack([s.stored for s in splits])  # (P, N, C, h, w)
        for i, s in enumerate(splits):
            s.stored = self.stored[i]  # a view: the rows are held once
        self.y = torch.stack([s.y for s in splits])  # (P, N)
        decoders = [s.decode for s in splits]
        self.dtype = decoders[0].dtype

        def stack(values: list[torch.Tensor | None]) -> torch.Tensor | None:  # per member (C,...) -> (P, 1, C, 1, 1)
            return None if values[0] is None else torch.stack([v.reshape(-1, 1, 1) for v in values]).unsqueeze(1)

        self.offset, self.scale = stack([d.offset for d in decoders]), stack([d.scale for d in decoders])
        self.mean, self.std = stack([d.mean for d in decoders]), stack([d.std for d in decoders])
        self.active = list(range(len(splits)))  # positions in the stacked tensors of the members still training

    def drop(self, positions: list[int]) -> None:
        """The members at ``positions`` (of the active ones, as the pack numbers them) leave."""
        self.active = [p for i, p in enumerate(self.active) if i not in positions]

    def epoch(self, seed: int, epoch: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each step's ``x (P, B, C, h, w)`` float32 normalised and ``y (P, B)`` of the active members."""
        orders = [batch_indices(self.n, batch_size, epoch_generator(seed, k, epoch)) for k in self.ks]
        dev = self.stored.device
        for step in range(len(orders[0])):
            members = torch.tensor(self.active, device=dev)
            rows = torch.stack([orders[p][step] for p in self.active]).to(dev)  # (P, B)
            stored = self.stored[members[:, None], rows]  # (P, B, C, h, w)
            if self.dtype == "uint8":  # data_split.quantize.dequantize's operations, per member's codec
                values = self.offset[members] + self.scale[members] * stored.to(torch.float32)
            else:
                values = stored.to(torch.float32)
            yield (values - self.mean[members]) / self.std[members], self.y[members[:, None], rows]

"""The reference loader: a plain PyTorch DataLoader over precomputed, rank-sharded batch index lists.

Legend: N = dataset size; R = world size; B = per-rank batch size; C, H, W = image channels and size.

Epoch ``e`` visits ``torch.randperm(N, generator=manual_seed(seed + e))``; rank ``r`` takes the strided
shard ``order[r::R]`` cut to ``N // R`` positions (every rank the same count), in batches of ``B``.
Batches are a pure function of (seed, epoch, step) and the dataset's per-sample augmentation is a pure
function of (seed, epoch, index), so ``iter_epoch(e, start_step=s)`` yields exactly the batches an
uninterrupted ``iter_epoch(e)`` yields from step ``s`` on, with any number of workers: exact resume.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .batch import Batch, quantize_unit
from .spec import SampleSpec

logger = logging.getLogger(__name__)

Sample = tuple[torch.Tensor, int, list[tuple[str, str]]]


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def ignore_stop_signals(worker_id: int) -> None:
    """Workers ignore Ctrl-C and the schedulers' stop signals (which reach every process of the job): the
    training process decides when to stop, and it needs their batches to finish its step. They end with
    it, as DataLoader workers do. They start with the signals blocked (``start_workers``), so one that
    arrives before this runs is dropped here instead of killing the worker."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def start_workers(loader: DataLoader):
    """``iter(loader)`` with the stop signals blocked while its workers are forked: a worker inherits the
    block until ``ignore_stop_signals`` runs (torch's own worker setup would let SIGTERM end it). This
    process gets any signal that came meanwhile once the block is lifted."""
    if not loader.num_workers:
        return iter(loader)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack ``(image [C,H,W], index, skipped)`` samples into a :class:`Batch`.

    Gray samples (C = 1) in a batch that also holds colour ones (C = 3) are expanded to 3 channels
    (``expand``, then stacked); a batch of only gray samples stays ``[B, 1, H, W]``.
    """
    if not samples:
        raise ValueError("collate: expected at least one sample, got an empty list; check the batch sampler")
    images = [s[0] for s in samples]
    channels = {int(img.shape[0]) for img in images}
    if len(channels) > 1:
        widest = max(channels)
        if channels != {1, widest}:
            raise ValueError(
                f"collate: expected samples with 1 or {widest} channels, got channel counts {sorted(channels)}; "
                "set in_chans consistently"
            )
        images = [img.expand(widest, -1, -1) if img.shape[0] == 1 else img for img in images]
    shapes = {tuple(img.shape[1:]) for img in images}
    if len(shapes) > 1:
        raise ValueError(f"collate: expected one image size per batch, got {sorted(shapes)}; resize to img_size first")
    skipped = [pair for s in samples for pair in s[2]]
    return Batch(
        images=torch.stack(images),
        indices=torch.tensor([int(s[1]) for s in samples], dtype=torch.int64),
        skipped=skipped,
    )


class WireCollate:
    """:func:`collate`, then :func:`~infmae.data.batch.quantize_unit` (in the worker, so the pinned copy and
    the transfer carry uint16). A class, not a closure, so DataLoader workers can pickle it.

    Args:
        spec: the :class:`~infmae.data.spec.SampleSpec` the samples were made by (their mean/std).
    """

    def __init__(self, spec: SampleSpec):
        self.spec = spec

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        batch = collate(samples)
        return quantize_unit(batch, *self.spec.normalisation(int(batch.images.shape[1])))


class ReferenceLoader:
    """Deterministic, resumable, rank-sharded batches from a map-style dataset.

    Args:
        dataset: returns ``(image, index, skipped)`` per position; ``set_epoch(e)`` is called when present.
        batch_size: per-rank batch size B.
        seed: seed of the epoch order (``seed + epoch``).
        num_workers: DataLoader worker processes (0 = in this process).
        drop_last: drop the last incomplete batch of each rank (default; the trainer's steps count on it).
        rank, world_size: this process's shard.
        pin_memory: pin host batches; ``None`` = when CUDA is available.
        wire_uint16: ship uint16 codes plus the normalisation affine (``train.wire_uint16``, engine only);
            needs a dataset with a ``spec`` (:class:`~infmae.data.folder.ImageFolderDataset`).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool | None = None,
        wire_uint16: bool = False,
    ):
        if batch_size <= 0:
            raise ValueError(
                f"ReferenceLoader: expected batch_size >= 1, got {batch_size}; pass the per-rank batch size"
            )
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(
                f"ReferenceLoader: expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}; "
                "take them from torch.distributed"
            )
        if num_workers < 0:
            raise ValueError(f"ReferenceLoader: expected num_workers >= 0, got {num_workers}; 0 reads in this process")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.drop_last = bool(drop_last)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self._skipped: dict[str, str] = {}
        self.collate_fn = collate
        if wire_uint16:
            spec = getattr(dataset, "spec", None)
            if spec is None:
                raise ValueError(
                    "ReferenceLoader: wire_uint16 needs the dataset's mean/std (a .spec, as ImageFolderDataset "
                    f"has), got {type(dataset).__name__}; leave wire_uint16 off for this dataset"
                )
            self.collate_fn = WireCollate(spec)
        _ = self.steps_per_epoch  # validate the sizes now, not at the first epoch

    @property
    def per_rank(self) -> int:
        """Dataset positions each rank visits per epoch: ``N // world_size``."""
        return len(self.dataset) // self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch on each rank."""
        n = len(self.dataset)
        global_batch = self.batch_size * self.world_size
        if self.drop_last and n < global_batch:
            raise ValueError(
                f"ReferenceLoader: expected at least one global batch ({self.batch_size} x {self.world_size} ranks "
                f"= {global_batch} images), got a dataset of {n}; lower the batch size or add images"
            )
        if self.per_rank == 0:
            raise ValueError(
                f"ReferenceLoader: expected at least {self.world_size} images (one per rank), got {n}; add images"
            )
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    @property
    def skipped(self) -> dict[str, str]:
        """Every file replaced so far because it failed to decode: path -> reason."""
        return dict(self._skipped)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """``[N // world_size]`` int64: this rank's dataset positions for ``epoch``, in visiting order."""
        if epoch < 0:
            raise ValueError(f"ReferenceLoader.epoch_order: expected epoch >= 0, got {epoch}; epochs count from 0")
        generator = torch.Generator().manual_seed(self.seed + int(epoch))
        order = torch.randperm(len(self.dataset), generator=generator)
        return order[self.rank :: self.world_size][: self.per_rank]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of dataset positions for ``epoch`` (``steps_per_epoch`` lists)."""
        order = self.epoch_order(epoch).tolist()
        return [order[s * self.batch_size : (s + 1) * self.batch_size] for s in range(self.steps_per_epoch)]

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield the batches of ``epoch`` from ``start_step`` on (host tensors; call ``Batch.to`` after).

        A fresh DataLoader is built per call, after ``dataset.set_epoch(epoch)``, so worker processes
        receive the epoch with their copy of the dataset.
        """
        steps = self.steps_per_epoch
        if not 0 <= start_step <= steps:
            raise ValueError(
                f"ReferenceLoader.iter_epoch: expected 0 <= start_step <= {steps}, got {start_step}; "
                "resume from the step stored in the checkpoint"
            )
        batches = self.epoch_batches(epoch)[start_step:]
        if not batches:
            return
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            # an explicit generator: DataLoader otherwise draws its worker base seed from the global RNG
            generator=torch.Generator().manual_seed(self.seed + int(epoch)),
            worker_init_fn=ignore_stop_signals if self.num_workers else None,
        )
        for batch in start_workers(loader):
            if batch.skipped:
                new = [(p, r) for p, r in batch.skipped if p not in self._skipped]
                self._skipped.update(batch.skipped)
                if new and hasattr(self.dataset, "note_unreadable"):
                    self.dataset.note_unreadable(new)
            yield batch

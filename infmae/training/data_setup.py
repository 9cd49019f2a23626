"""The data a run trains and evaluates on: this rank's shard of the training set, its loader (reference
or DALI), the held-out set (a folder of its own, or a split taken out of the training set) with its
evaluator, and ``steps_per_epoch`` (optimizer steps: the loader's micro-batches // ``accum_steps``).
Without ``data.path`` rank 0 writes a synthetic infrared set into the run folder first. At the end of a
run rank 0 lists the unusable files met (``skipped_files.tsv``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from infmae.config import Config
from infmae.data import ImageFolderDataset, ReferenceLoader, SampleSpec, generate_dataset
from infmae.training.distributed import barrier
from infmae.training.evaluation import Evaluator, in_validation_split

if TYPE_CHECKING:
    from infmae.data.dali import DaliLoader

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    dataset: ImageFolderDataset
    """The training images (without the validation split); the loader reads this rank's shard of it."""
    val_dataset: ImageFolderDataset | None
    """The held-out images in eval view (a fixed view per image), None without validation."""
    loader: ReferenceLoader | DaliLoader
    """Reads this rank's shard: ``iter_epoch(epoch, start_step)``, ``steps_per_epoch`` micro-batches."""
    evaluator: Evaluator | None
    steps_per_epoch: int
    """Optimizer steps per epoch; a tail of micro-batches short of a step is dropped."""

    def micro_batches(self, position: dict, accum_steps: int):
        """Yield (epoch, batch) from ``position`` (``RunState.data_position``) on, forever, epoch after epoch."""
        epoch, start = position["epoch"], position["micro_step"]
        while True:
            used = self.steps_per_epoch * accum_steps  # a tail short of a step is dropped
            for i, batch in enumerate(self.loader.iter_epoch(epoch, start_step=start)):
                if start + i >= used:
                    break
                yield epoch, batch
            epoch, start = epoch + 1, 0


def build_training_data(
    config: Config, run_dir: Path, device: torch.device, rank: int, world_size: int
) -> TrainingData:
    """Collective under a process group (the synthetic set is written by rank 0 and read by all)."""
    tc, dc = config.train, config.data
    dataset = _dataset(config, Path(dc.path) if dc.path else _synthetic_data(config, run_dir, rank == 0))
    val_dataset = _validation_set(config, dataset, world_size)  # taken out of dataset when it is a split
    shard = dict(batch_size=tc.batch_size, seed=tc.seed, rank=rank, world_size=world_size)
    loader: ReferenceLoader | DaliLoader
    if dc.loader == "dali":
        from infmae.data.dali import DaliLoader

        device_id = (device.index or 0) if device.type == "cuda" else None
        loader = DaliLoader(dataset, **shard, device_id=device_id, num_threads=dc.dali_threads)
    else:
        loader = ReferenceLoader(dataset, **shard, num_workers=dc.num_workers, wire_uint16=tc.wire_uint16)
    steps_per_epoch = loader.steps_per_epoch // tc.accum_steps
    evaluator = (
        Evaluator(val_dataset, tc.batch_size, dc.num_workers, rank, world_size) if val_dataset is not None else None
    )
    if steps_per_epoch < 1:
        raise ValueError(
            f"pretrain: expected at least one optimizer step per epoch, got "
            f"{loader.steps_per_epoch} micro-batches for accum_steps={tc.accum_steps}; "
            "lower train.accum_steps or train.batch_size, or add images"
        )
    return TrainingData(dataset, val_dataset, loader, evaluator, steps_per_epoch)


def _dataset(config: Config, root: Path) -> ImageFolderDataset:
    dc, mc = config.data, config.model
    return ImageFolderDataset(
        root,
        SampleSpec.from_config(dc, mc.img_size, mc.in_chans, config.train.seed),
        min_size=dc.min_size,
        base=dc.manifest_root or None,
        allow_outside_root=dc.allow_outside_root,
    )


def _validation_set(config: Config, dataset: ImageFolderDataset, world_size: int) -> ImageFolderDataset | None:
    dc = config.data
    if dc.val_path:
        held = _dataset(config, Path(dc.val_path))
        held.eval_view = True
    elif dc.val_fraction > 0:
        held = dataset.split_off(lambda path: in_validation_split(path, dc.val_fraction))
    else:
        return None
    if len(held) < world_size:
        raise ValueError(
            f"data: expected at least one validation image per rank, got {len(held)} for {world_size} "
            "ranks; raise data.val_fraction or add images to --val-data"
        )
    log.info("validation: %d held-out images (%s)", len(held), dc.val_path or f"{dc.val_fraction:.1%} split")
    return held


def _synthetic_data(config: Config, run_dir: Path, is_main: bool) -> Path:
    root = run_dir / "synthetic_data"
    done = root / ".complete"
    if not done.exists() and is_main:
        log.info("no --data given: writing %d synthetic infrared images to %s", config.data.synthetic_count, root)
        generate_dataset(root, config.data.synthetic_count, seed=config.train.seed, include_bad=True)
        done.write_text("ok\n")
    barrier()  # the other ranks read what rank 0 wrote
    return root


def write_skipped_files(run_dir: Path, skipped: dict[str, str]) -> None:
    """``RUN/skipped_files.tsv``: path and reason of every unusable file met, and one line in the log."""
    path = run_dir / "skipped_files.tsv"
    path.write_text("".join(f"{p}\t{r}\n" for p, r in sorted(skipped.items())))
    if skipped:
        log.warning("skipped %d unusable files (listed in %s)", len(skipped), path)
    else:
        log.info("no files were skipped")

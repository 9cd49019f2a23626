"""ReferenceLoader: exact resume (bitwise, 0 and 2 workers), rank sharding, sizes, skipped accounting."""

from __future__ import annotations

import pytest
import torch

from infmae.data.folder import ImageFolderDataset
from infmae.data.loader import ReferenceLoader, collate
from infmae.data.synthetic import BAD_FILES, generate_dataset

SIZES = [(40, 56), (64, 48), (30, 90)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ir_loader")
    generate_dataset(root, 30, seed=2, sizes=SIZES, include_bad=True)
    return ImageFolderDataset(root, img_size=(32, 32), in_chans=3, seed=4)


def _same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x.images, y.images) and torch.equal(x.indices, y.indices) and x.skipped == y.skipped
        for x, y in zip(a, b)
    )


def test_exact_resume_is_bitwise_with_and_without_workers(dataset):
    reference = None
    for workers in (0, 2):
        loader = ReferenceLoader(dataset, batch_size=4, seed=9, num_workers=workers)
        assert loader.steps_per_epoch == len(dataset) // 4
        full = list(loader.iter_epoch(1))
        assert len(full) == loader.steps_per_epoch
        resumed = list(loader.iter_epoch(1, start_step=3))
        assert _same(full[3:], resumed)
        if reference is None:
            reference = full
        else:  # the worker count does not change a single bit
            assert _same(full, reference)
    assert not _same(list(loader.iter_epoch(2))[:2], reference[:2])  # another epoch, other batches
    assert list(loader.iter_epoch(1, start_step=loader.steps_per_epoch)) == []


@pytest.mark.parametrize("workers", [0, 2])
def test_the_epoch_reaches_the_workers(dataset, workers):
    loader = ReferenceLoader(dataset, batch_size=4, seed=6, num_workers=workers)
    got = list(loader.iter_epoch(3, start_step=4))[:2]
    reference = ImageFolderDataset(dataset.root_dir, img_size=(32, 32), in_chans=3, seed=4)
    reference.set_epoch(3)
    for batch, positions in zip(got, loader.epoch_batches(3)[4:6]):
        expected = collate([reference[i] for i in positions])
        assert torch.equal(batch.images, expected.images) and torch.equal(batch.indices, expected.indices)
    reference.set_epoch(0)
    assert not torch.equal(got[0].images, collate([reference[i] for i in loader.epoch_batches(3)[4]]).images)


def test_epoch_order_is_a_permutation_and_the_batches_follow_it(dataset):
    loader = ReferenceLoader(dataset, batch_size=5, seed=3)
    batches = loader.epoch_batches(0)
    flat = [i for batch in batches for i in batch]
    assert len(flat) == len(set(flat)) == loader.steps_per_epoch * 5
    assert flat == torch.randperm(len(dataset), generator=torch.Generator().manual_seed(3))[: len(flat)].tolist()
    yielded = list(loader.iter_epoch(0))
    bad = {str(dataset.root_dir / BAD_FILES[k]) for k in ("truncated_png", "corrupt_tiff16")}
    for batch, positions in zip(yielded, batches):
        assert batch.images.shape[0] == 5
        # an index differs from the planned one only where a bad file was replaced
        replaced = [p for p, got in zip(positions, batch.indices.tolist()) if p != got]
        assert {str(dataset.path(p)) for p in replaced} <= bad
        assert len(batch.skipped) >= len(replaced)
    assert set(loader.skipped) == bad  # both bad files are in every epoch
    assert all("cannot decode pixels" in reason for reason in loader.skipped.values())


def test_iterating_leaves_the_global_rng_alone(dataset):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    list(ReferenceLoader(dataset, batch_size=4, seed=1, num_workers=2).iter_epoch(0, start_step=5))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_shards_are_disjoint_equal_and_cover(dataset, world_size):
    n = len(dataset)
    loaders = [ReferenceLoader(dataset, 2, seed=8, rank=r, world_size=world_size) for r in range(world_size)]
    orders = [loader.epoch_order(5) for loader in loaders]
    assert all(len(o) == n // world_size for o in orders)
    together = torch.cat(orders).tolist()
    assert len(set(together)) == len(together) == (n // world_size) * world_size  # disjoint
    full = torch.randperm(n, generator=torch.Generator().manual_seed(13))
    assert set(together) == set(full[: (n // world_size) * world_size].tolist())  # covers all but the tail
    assert {loader.steps_per_epoch for loader in loaders} == {n // world_size // 2}


def test_sizes_are_validated(dataset):
    n = len(dataset)
    with pytest.raises(ValueError, match=rf"expected at least one global batch .* got a dataset of {n}"):
        ReferenceLoader(dataset, batch_size=n // 2 + 1, seed=0, world_size=2)
    loader = ReferenceLoader(dataset, batch_size=n + 5, seed=0, drop_last=False)
    assert loader.steps_per_epoch == 1
    assert [len(b) for b in loader.iter_epoch(0)] == [n]
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        ReferenceLoader(dataset, 2, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"expected 0 <= start_step <= \d+, got 99"):
        next(ReferenceLoader(dataset, 2, seed=0).iter_epoch(0, start_step=99))

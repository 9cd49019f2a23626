"""The engine's wire format: batches cross to the device as uint16 codes and are normalised there."""

import numpy as np
import pytest
import torch

from infmae.data.batch import Batch, quantize_unit
from infmae.data.folder import ImageFolderDataset
from infmae.data.loader import ReferenceLoader
from infmae.data.mapping import apply_range, image_range
from infmae.data.synthetic import generate_dataset
from infmae.data.transforms import DEFAULT_MEAN, DEFAULT_STD, AugmentParams, apply_augment
from infmae.training.data_setup import build_training_data
from infmae.training.trainer import Trainer
from tests.helpers import losses, tiny_model, tiny_run
from tests.tolerances import TOLERANCES


def reference_batch(bits: int, channels: int, batch: int = 4, size: int = 32) -> Batch:
    """Samples as the reference loader makes them: 16-bit percentile mapping, bicubic crop, flip, mean/std."""
    rng = np.random.default_rng(bits * 10 + channels)
    dtype = np.uint8 if bits == 8 else np.uint16
    images = []
    for i in range(batch):
        array = rng.integers(0, 256 if bits == 8 else 4096, size=(48, 40, channels)).astype(dtype)
        lo, hi = image_range(array) if bits == 16 else (0.0, 255.0)
        params = AugmentParams(top=3, left=5, height=30 + i, width=25, flip=bool(i % 2))
        crop = array[params.top : params.top + params.height, params.left : params.left + params.width]
        local = AugmentParams(top=0, left=0, height=params.height, width=params.width, flip=params.flip)
        images.append(apply_augment(apply_range(crop, lo, hi), local, (size, size), DEFAULT_MEAN, DEFAULT_STD))
    return Batch(images=torch.stack(images), indices=torch.arange(batch))


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("channels", [1, 3])
def test_wire_uint16_decodes_to_the_reference_batch(bits, channels):
    reference = reference_batch(bits, channels)
    wire = quantize_unit(reference, torch.tensor(DEFAULT_MEAN), torch.tensor(DEFAULT_STD))
    assert wire.images.dtype == torch.uint16
    decoded = wire.to("cpu", torch.float32, channels=3)
    expected = reference.to("cpu", torch.float32, channels=3)
    atol, rtol = TOLERANCES[("wire_uint16", torch.float32)]
    torch.testing.assert_close(decoded.images, expected.images, atol=atol, rtol=rtol)
    assert torch.equal(decoded.indices, reference.indices)


def test_a_wire_batch_arrives_as_float_images_of_the_asked_dtype():
    """``to`` decodes: the result carries no wire, has the requested dtype (float32 when none is asked),
    and a gray wire batch is repeated to the model's channels like a float one."""
    wire = quantize_unit(reference_batch(16, 1), torch.tensor(DEFAULT_MEAN), torch.tensor(DEFAULT_STD))
    as_bf16 = wire.to("cpu", torch.bfloat16, channels=3)
    assert (as_bf16.wire, as_bf16.images.dtype, tuple(as_bf16.images.shape)) == (None, torch.bfloat16, (4, 3, 32, 32))
    kept = wire.to("cpu")
    assert (kept.wire, kept.images.dtype) == (None, torch.float32)
    torch.testing.assert_close(as_bf16.images[:, :1].float(), kept.images, atol=2e-2, rtol=0)  # bf16 of the same


def test_quantize_refuses_an_integer_batch():
    wire = quantize_unit(reference_batch(8, 1), torch.tensor(DEFAULT_MEAN), torch.tensor(DEFAULT_STD))
    with pytest.raises(ValueError, match="normalised float batch"):
        quantize_unit(wire, torch.tensor(DEFAULT_MEAN), torch.tensor(DEFAULT_STD))


@pytest.mark.parametrize("channels", [1, 3])
def test_bytes_per_batch_host_to_device(channels):
    """B=256, 224 px: float32 4 bytes a pixel before, uint16 2 bytes after (same for 8- and 16-bit sources:
    the wire holds the resized [0, 1] values, not the source's pixels); indices 2,048 bytes; affine 8*C."""
    float_batch = Batch(images=torch.zeros(256, channels, 224, 224), indices=torch.arange(256))
    wire = quantize_unit(float_batch, torch.tensor(DEFAULT_MEAN), torch.tensor(DEFAULT_STD))
    pixels = 256 * channels * 224 * 224
    assert float_batch.images.nbytes + float_batch.indices.nbytes == 4 * pixels + 2048
    affine = wire.wire.scale.nbytes + wire.wire.offset.nbytes
    assert wire.images.nbytes + wire.indices.nbytes + affine == 2 * pixels + 2048 + 8 * channels


def test_reference_loader_wire_matches_its_float_batches(tmp_path):
    """The real loader (8- and 16-bit files, 2 workers so the collate is pickled) on the wire format vs
    the reference: same indices and skips, images within the named tolerance; the reference is untouched."""
    generate_dataset(tmp_path, 12, seed=3, sizes=[(40, 56), (64, 48)], include_bad=False)
    dataset = ImageFolderDataset(tmp_path, img_size=(32, 32), in_chans=3, seed=5)
    reference = list(ReferenceLoader(dataset, batch_size=4, seed=1).iter_epoch(0))
    wired = list(ReferenceLoader(dataset, batch_size=4, seed=1, num_workers=2, wire_uint16=True).iter_epoch(0))
    atol, rtol = TOLERANCES[("wire_uint16", torch.float32)]
    assert len(wired) == len(reference) == 3
    for float_batch, wire_batch in zip(reference, wired):
        assert float_batch.images.dtype == torch.float32 and wire_batch.images.dtype == torch.uint16
        assert torch.equal(float_batch.indices, wire_batch.indices) and float_batch.skipped == wire_batch.skipped
        decoded = wire_batch.to("cpu", torch.float32, channels=3).images
        torch.testing.assert_close(
            decoded, float_batch.to("cpu", torch.float32, channels=3).images, atol=atol, rtol=rtol
        )


def test_wire_needs_the_dataset_statistics():
    with pytest.raises(ValueError, match="mean/std"):
        ReferenceLoader([(torch.zeros(1, 4, 4), 0, [])] * 4, batch_size=2, seed=0, wire_uint16=True)


def test_the_trainer_ships_the_wire_format_when_set(tmp_path):
    """``train.wire_uint16`` reaches the trainer's loader (its batches are uint16 codes), and a step on them
    gives the loss of the float batches within what 4e-5 at the input allows."""
    images = tmp_path / "images"
    generate_dataset(images, 8, seed=2, include_bad=False)
    runs = {}
    for wired in (False, True):
        config = tiny_run(images, tiny_model(), max_steps=1, wire_uint16=wired)
        data = build_training_data(config, tmp_path / f"run{int(wired)}", torch.device("cpu"), 0, 1)
        _, first = next(data.micro_batches({"epoch": 0, "micro_step": 0}, accum_steps=1))
        assert first.images.dtype == (torch.uint16 if wired else torch.float32)
        runs[wired] = tmp_path / f"fit{int(wired)}"
        Trainer(config, runs[wired]).fit()
    float_loss, wired_loss = losses(runs[False])[0], losses(runs[True])[0]
    assert wired_loss != float_loss  # the codes are not the float batch: the comparison below means something
    assert wired_loss == pytest.approx(float_loss, rel=1e-4)

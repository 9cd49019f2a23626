"""A 16-bit frame whose counts span 7,000-9,000 reaches the model with its structure intact."""

import numpy as np
import torch

from infmae.data import ImageFolderDataset, write_image
from infmae.model.infmae import InfMAE
from tests.helpers import tiny_model


def test_raw_thermal_counts_reach_the_model_with_structure(tmp_path):
    yy, xx = np.mgrid[0:128, 0:160]
    scene = 7000 + 2000 * (0.5 + 0.5 * np.sin(xx / 9.0) * np.cos(yy / 13.0))  # 7,000-9,000 counts
    counts = np.clip(np.round(scene), 7000, 9000).astype(np.uint16)
    write_image(tmp_path / "frame16.png", counts)
    dataset = ImageFolderDataset(
        tmp_path, img_size=(64, 64), in_chans=3, seed=0, scale=(1.0, 1.0), ratio=(1.25, 1.25), hflip_prob=0.0
    )
    image, _, _ = dataset[0]
    unit = image * 0.2 + 0.425  # undo the normalisation: back to [0, 1]
    assert image.shape == (1, 64, 64)
    assert unit.std() > 0.2  # not flat: the 2,000-count swing spans most of [0, 1]
    saturated = ((unit <= 0.0) | (unit >= 1.0)).float().mean()
    assert saturated < 0.05  # not saturated: only the percentile tails clip
    # the structure is the scene's: correlate with the same crop of the counts, resized
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(counts.astype(np.float32))[None, None], size=(64, 64), mode="bilinear", antialias=True
    )[0, 0]
    corr = torch.corrcoef(torch.stack([unit[0].flatten(), reference.flatten()]))[0, 1]
    assert corr > 0.99
    # and the model sees different masks for different content, i.e. the input is not a constant
    model = InfMAE(tiny_model(img_size=(64, 64)))
    ids = model.masking(image.expand(3, -1, -1)[None]).ids_keep[0]
    assert ids.tolist() != list(range(0, 16, 4))

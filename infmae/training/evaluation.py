"""Held-out evaluation: is the model better than a trivial guess on images it never trained on?

On a validation set (a deterministic split of the data, or a folder of its own), with the model's own
IAM masks and a fixed view of each image (the largest centred crop of the training aspect, no flip):

- ``val_loss``: the masked-patch MSE, exactly the training loss;
- ``val_baseline_loss``: the same images and masks, each masked patch predicted as the mean of that
  image's visible pixels, in the loss's target space (a model that learned nothing about structure
  does no better than this);
- ``val_psnr``: 10 log10(1 / MSE) of the masked pixels in [0, 1] intensity (without norm_pix_loss).

Legend: B images, L patches, P = 256 * C values per patch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from infmae.data.loader import collate, ignore_stop_signals, start_workers
from infmae.model.patchify import patchify


def in_validation_split(path: str, fraction: float) -> bool:
    """Whether a file belongs to the validation split: decided by a hash of its path, so the split does
    not change when files are added, removed or reordered."""
    digest = hashlib.sha1(path.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@torch.no_grad()
def masked_errors(
    imgs_BCHW: torch.Tensor, pred_BLP: torch.Tensor, mask_BL: torch.Tensor, norm_pix_loss: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (model MSE [B], baseline MSE [B]) over each image's masked patches, in the loss's target space."""
    target = patchify(imgs_BCHW.float())
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    mask = mask_BL.float()
    visible = 1 - mask
    masked_count = mask.sum(dim=1)
    model = (((pred_BLP.float() - target) ** 2).mean(dim=-1) * mask).sum(dim=1) / masked_count
    visible_mean = (target * visible[..., None]).sum(dim=(1, 2)) / (visible.sum(dim=1) * target.shape[-1])
    guess = ((visible_mean[:, None, None] - target) ** 2).mean(dim=-1)
    baseline = (guess * mask).sum(dim=1) / masked_count
    return model, baseline


@dataclass
class Evaluation:
    val_loss: float
    val_baseline_loss: float
    val_psnr: float | None
    images: int

    def record(self) -> dict:
        return {
            "val_loss": self.val_loss,
            "val_baseline_loss": self.val_baseline_loss,
            "val_psnr": self.val_psnr,
            "val_images": self.images,
        }

    def describe(self, step: int) -> str:
        """The log line of this evaluation."""
        psnr = "" if self.val_psnr is None else f", PSNR {self.val_psnr:.2f} dB"
        return (
            f"eval step {step}: val_loss {self.val_loss:.4f} (predicting each image's visible mean: "
            f"{self.val_baseline_loss:.4f}{psnr}) on {self.images} held-out images"
        )


class Evaluator:
    """Evaluates a model on this rank's shard of a validation dataset (``rank::world_size``) and reduces
    over the ranks. The dataset must be in eval mode (a fixed view per image)."""

    def __init__(self, dataset, batch_size: int, num_workers: int, rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        # every rank evaluates as many images (a wrapped model's forward is collective): the remainder of
        # len(dataset) / world_size is left out
        per_rank = len(dataset) // world_size
        self.shard = list(range(rank, per_rank * world_size, world_size))
        self.batch_size, self.num_workers = batch_size, num_workers
        self.world_size = world_size

    def batches(self):
        loader = DataLoader(
            Subset(self.dataset, self.shard),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate,
            worker_init_fn=ignore_stop_signals if self.num_workers else None,
        )
        yield from start_workers(loader)

    @torch.no_grad()
    def run(self, model, device: torch.device, channels: int, autocast, std: float, norm_pix_loss: bool):
        """-> (Evaluation over every rank, the first batch and its output for pictures, or None)."""
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # model MSE, baseline MSE, images
        first = None
        for batch in self.batches():
            images = batch.to(device, torch.float32, channels=channels).images
            with autocast:
                out = model(images)
            errors, baseline = masked_errors(images, out.pred, out.mask, norm_pix_loss)
            sums += torch.stack(
                [errors.sum().double(), baseline.sum().double(), torch.tensor(len(errors), device=device)]
            )
            if first is None:
                first = (batch, images, out, errors)
        if self.world_size > 1:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        total, baseline_total, count = sums.tolist()
        count = max(count, 1)
        loss = total / count
        # the loss is in normalised units; without norm_pix_loss it is (pixel error / std)^2
        psnr = None if norm_pix_loss or loss <= 0 else 10 * math.log10(1 / (loss * std**2))
        return Evaluation(loss, baseline_total / count, psnr, int(count)), first

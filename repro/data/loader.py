"""The training loader: a whole split held as uint8 on the device, batches normalised and augmented there.

In the style of KellerJordan/cifar10-airbench: no worker processes, no PIL, no per-image Python. Each
batch is gathered from the uint8 tensor with one pair of gathers that applies the random crop (zero
padding of `pad` = 4 pixels, as torchvision's RandomCrop(32, padding=4)) and the horizontal flip together,
then converted to float and normalised, x = (pixel / 255 - mean) / std. All randomness (the shuffle, the
crop offsets, the flips) is drawn for the whole epoch from a torch.Generator seeded with (seed, epoch), so
epoch e of a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import math

import torch

PAD = 4  # pixels of zero padding around each image for the random crop


def augment_batch(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Crop and flip uint8 images [B, C, H, W] with two gathers (rows, then columns), no per-image work.

    Output pixel (i, j) of image b is padded[b, :, top_b + i, left_b + j'] with j' = W - 1 - j when flip_b,
    else j; padded is the image with `pad` zero pixels on every side, and top, left in [0, 2 * pad].
    """
    batch, channels, height, width = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    device = images.device
    rows = top.to(device)[:, None] + torch.arange(height, device=device)  # [B, H]
    columns = torch.arange(width, device=device).expand(batch, width)
    columns = torch.where(flip.to(device)[:, None], columns.flip(1), columns) + left.to(device)[:, None]  # [B, W]
    # Expanded (stride-0) index views: nothing of size [B, C, H, W] is built for the indices.
    cropped_rows = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, padded.shape[3]))
    return cropped_rows.gather(3, columns[:, None, None, :].expand(batch, channels, height, width))


class DeviceLoader:
    """Iterate over (x float32 [B, C, H, W] normalised, on `device`; y int64 [B]) batches of one split."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device,
        mean,
        std,
        shuffle: bool = False,
        seed: int = 0,
        crop: bool = False,
        flip: bool = False,
        drop_last: bool = False,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values (one per channel), got {len(mean)}/{len(std)}")
        # x = pixel * scale + shift  ==  (pixel / 255 - mean) / std, folded into one multiply-add.
        std_tensor = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_tensor = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_tensor)
        self.shift = -mean_tensor / std_tensor
        self.batch_size = batch_size
        self.shuffle, self.seed, self.crop, self.flip, self.drop_last = shuffle, seed, crop, flip, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        count = len(self.images)
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def epoch_plan(self) -> dict[str, torch.Tensor]:
        """This epoch's order and augmentation draws (CPU tensors), a pure function of (seed, epoch)."""
        count = len(self.images)
        generator = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + self.epoch)
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        plan = {"order": order}
        if self.crop:
            plan["top"] = torch.randint(0, 2 * PAD + 1, (count,), generator=generator)
            plan["left"] = torch.randint(0, 2 * PAD + 1, (count,), generator=generator)
        if self.flip:
            plan["flip"] = torch.rand(count, generator=generator) < 0.5
        return plan

    def __iter__(self):
        plan = {name: value.to(self.device) for name, value in self.epoch_plan().items()}
        order = plan["order"]
        count = len(order)
        stop = count - count % self.batch_size if self.drop_last else count
        for start in range(0, stop, self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.images[index]
            if self.crop or self.flip:
                size = len(index)
                top = plan["top"][start : start + size] if self.crop else torch.full((size,), PAD, device=self.device)
                left = plan["left"][start : start + size] if self.crop else torch.full((size,), PAD, device=self.device)
                flip = plan["flip"][start : start + size] if self.flip else torch.zeros(size, dtype=torch.bool, device=self.device)
                images = augment_batch(images, top, left, flip)
            yield images.float().mul_(self.scale).add_(self.shift), self.labels[index]

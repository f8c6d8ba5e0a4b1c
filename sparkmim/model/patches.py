"""Patchify / unpatchify images on the mask grid (patch side = the encoder's total stride)."""
import torch


def patchify(images_bchw: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, h*p, w*p) -> (B, h*w, p*p*C), patches in row-major order, pixels (row, col, channel)."""
    batch, channels, height, width = images_bchw.shape
    h, w = height // patch, width // patch
    x = images_bchw.reshape(batch, channels, h, patch, w, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, h * w, patch * patch * channels)


def unpatchify(patches_bln: torch.Tensor, patch: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify` for a grid of h x w patches."""
    batch = patches_bln.shape[0]
    channels = patches_bln.shape[-1] // (patch * patch)
    x = patches_bln.reshape(batch, h, w, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, h * patch, w * patch)

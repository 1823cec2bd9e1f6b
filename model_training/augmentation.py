"""Random 3D affine augmentation of the paper: rotation ±5°, scaling ±10 %, translation ±10 % of the image size.

Applied jointly to the image and the haematoma mask with :func:`torch.nn.functional.affine_grid` /
:func:`~torch.nn.functional.grid_sample` (trilinear = the paper's linear interpolation), so it runs on whatever
device the batch is on (GPU during training). The transform is defined in physical millimetres about the centre
of the model grid, so a rotation of the anisotropic 5 x 0.44 x 0.44 mm paper grid is a true rigid rotation and not
a shear. Tensors are (N, C, D, H, W) = z-y-x; affine_grid's normalised coordinates are ordered (x, y, z).

Conventions:
- scaling is one isotropic factor ``s`` in [0.9, 1.1] per transform; ``s > 1`` enlarges the content;
- rotation: three independent angles in [-5°, 5°] about the z, y and x axes (composed Rz @ Ry @ Rx);
- translation: independent per axis, uniform in ±10 % of the field of view along that axis;
- outside the input the image is filled with 0 (the background value of the preprocessed tensor, which is >= 0)
  and the mask with 0; the interpolated mask is re-binarised at 0.5.

"Tenfold" augmentation (:class:`AugmentationPlan`): an epoch visits every training case ``aug_copies`` times,
each visit with an independent random transform. With ``include_original`` the first visit (copy 0) is the
un-augmented case, so ``aug_copies = 10`` gives the original plus nine transformed copies ("the size of the
training dataset was increased 10 times"). Each transform is drawn from a generator seeded by
(seed, epoch, case index, copy), so runs are reproducible and a resumed run draws the same transforms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentationRanges:
    rotation_deg: float = 5.0
    scale: float = 0.10
    translation_fraction: float = 0.10


def _rotation_zyx(angles_rad: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix acting on (x, y, z) column vectors, composed from rotations about z, y and x."""
    az, ay, ax = angles_rad
    cz, sz, cy, sy, cx, sx = math.cos(az), math.sin(az), math.cos(ay), math.sin(ay), math.cos(ax), math.sin(ax)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def affine_theta(
    fov_mm_zyx: tuple[float, float, float],
    angles_deg_zyx: tuple[float, float, float] = (0.0, 0.0, 0.0),
    scale: float = 1.0,
    translation_fraction_zyx: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """The 3 x 4 ``theta`` of ``affine_grid`` (output -> input sampling, normalised x-y-z coordinates).

    Content is rotated by the angles, scaled by ``scale`` and shifted by ``translation_fraction * fov`` mm along
    each axis. Sampling: p_in = R^T (p_out - t) / s in millimetres, converted to normalised coordinates with
    the half field of view (align_corners=False: ±1 are the outer voxel edges).
    """
    half = np.array(fov_mm_zyx[::-1], dtype=np.float64) / 2.0  # x, y, z
    rot = _rotation_zyx(tuple(math.radians(a) for a in angles_deg_zyx))
    t_mm = np.array(translation_fraction_zyx[::-1], dtype=np.float64) * 2.0 * half
    a_mm = rot.T / scale
    b_mm = -a_mm @ t_mm
    a_norm = (a_mm * half[None, :]) / half[:, None]  # D^-1 A D
    b_norm = b_mm / half
    return np.concatenate([a_norm, b_norm[:, None]], axis=1)


def random_theta(
    rng: np.random.Generator, fov_mm_zyx: tuple[float, float, float], ranges: AugmentationRanges | None = None
) -> np.ndarray:
    """Draw one random transform (uniform in the paper's ranges) as an affine_grid ``theta`` (3 x 4)."""
    r = ranges or AugmentationRanges()
    angles = tuple(rng.uniform(-r.rotation_deg, r.rotation_deg, size=3))
    scale = float(rng.uniform(1 - r.scale, 1 + r.scale))
    shift = tuple(rng.uniform(-r.translation_fraction, r.translation_fraction, size=3))
    return affine_theta(fov_mm_zyx, angles, scale, shift)  # type: ignore[arg-type]


def apply_affine(
    image: torch.Tensor, mask: torch.Tensor | None, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resample ``image`` (N, C, D, H, W) and optionally ``mask`` (N, 1, D, H, W) with ``theta`` (N, 3, 4).

    Trilinear interpolation for both; zeros outside; the mask is re-binarised at 0.5 and keeps its dtype.
    """
    theta = theta.to(device=image.device, dtype=torch.float32)
    identity = torch.eye(3, 4, device=theta.device).expand_as(theta)
    if torch.equal(theta, identity):  # exact: grid_sample with an identity grid differs by float rounding
        return image.clone(), (None if mask is None else mask.clone())
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    out = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.to(image.dtype)
    if mask is None:
        return out, None
    m = F.grid_sample(mask.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out, (m >= 0.5).to(mask.dtype)


@dataclass(frozen=True)
class AugmentationPlan:
    """Tenfold augmentation: ``aug_copies`` visits of every case per epoch (see the module docstring)."""

    aug_copies: int = 10
    include_original: bool = True
    seed: int = 0
    ranges: AugmentationRanges = AugmentationRanges()

    def epoch_length(self, n_cases: int) -> int:
        return n_cases * self.aug_copies

    def decode(self, index: int, n_cases: int) -> tuple[int, int]:
        """Epoch sample index -> (case index, copy number)."""
        return index % n_cases, index // n_cases

    def is_augmented(self, copy: int) -> bool:
        return not (self.include_original and copy == 0)

    def theta_for(self, epoch: int, case_index: int, copy: int, fov_mm_zyx: tuple[float, float, float]) -> np.ndarray:
        """Deterministic random transform of (epoch, case, copy); identity for the un-augmented copy."""
        if not self.is_augmented(copy):
            return affine_theta(fov_mm_zyx)
        rng = np.random.default_rng([self.seed, epoch, case_index, copy])
        return random_theta(rng, fov_mm_zyx, self.ranges)


def augment_batch(
    image: torch.Tensor, mask: torch.Tensor, thetas: torch.Tensor, augmented: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Apply per-sample ``thetas`` (N, 3, 4) to the samples flagged in ``augmented`` (N,) bool; others untouched.

    Returns ``(image, mask, weight)``. A voxel-weight map (N, 1, D, H, W; None passes through) is resampled
    trilinearly like the image and reads 1 (the neutral weight) outside the source volume.
    """
    if not bool(augmented.any()):
        return image, mask, weight
    idx = torch.nonzero(augmented.to(image.device), as_tuple=False).flatten()
    img_t, mask_t = apply_affine(image[idx], mask[idx], thetas[idx])
    image = image.clone()
    mask = mask.clone()
    image[idx] = img_t
    mask[idx] = mask_t  # type: ignore[assignment]
    if weight is not None:
        weight_t, _ = apply_affine(weight[idx] - 1.0, None, thetas[idx])
        weight = weight.clone()
        weight[idx] = weight_t + 1.0
    return image, mask, weight

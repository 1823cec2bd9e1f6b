"""Phantom head for synthetic non-contrast head CT.

Tissue model (outside in, along the signed distance ``d`` to the scalp surface, mm): air (-1000 HU); scalp
(35-50 HU); skull with outer table, diploe and inner table (cortical 1100-1500 HU, diploe 350-650 HU);
a subarachnoid CSF rim (2-8 HU) widened into sulci; cortical grey matter (37-42 HU, gyral thickness
modulation); white matter (26-31 HU). The intracranial cavity is a piecewise ellipsoid (different anterior /
posterior and superior / inferior semi-axes) cut by a cranial floor that is higher anteriorly (orbital roofs)
and lower posteriorly; below the floor lies the skull base (bone) and then soft tissue of the face and neck.
Deep structures: lateral ventricles (bodies + atria) and the third ventricle (CSF), lentiform nuclei and
thalami (deep grey, 35-39 HU), and the falx (45-70 HU) with a thin interhemispheric CSF fissure.

Partial volume at 5 mm slices is analytic: every boundary is a level set whose voxel fraction ramps over
``sqrt(psf^2 + (5 mm * n_z)^2)`` mm, where ``n_z`` is the z-component of the boundary normal (see
:mod:`.geometry`). Variation between cases: head size and shape, in-plane position, yaw/pitch/roll,
scalp/skull/CSF thickness (atrophy), ventricle size and tissue densities. Calibrated so that soft-tissue voxels
(0-80 HU) have percentiles close to 9/24/33/43/63 HU and bone (> 300 HU) is ~15-20 % of the head, like the GE
head scan described in the shared data README.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_training.synthetic.geometry import (
    PSF_WIDTH_MM,
    Grid,
    ellipsoid_distance,
    head_frame,
    inside_fraction,
    ramp_width,
    rotation_matrix,
)

AIR_HU = -1000.0


@dataclass(frozen=True)
class HeadParams:
    """Drawn anatomy of one phantom. Lengths in mm, densities in HU; ``centre`` is LPS (mm)."""

    centre: tuple[float, float, float]
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    semi_lr: float  # scalp surface semi-axes (centre to surface)
    semi_ant: float
    semi_post: float
    semi_sup: float
    semi_inf: float
    scalp_mm: float
    skull_mm: float
    csf_mm: float
    gm_mm: float
    floor_depth_mm: float  # cranial floor (middle fossa) below the centre, head frame
    skull_base_mm: float
    ventricle_scale: float
    hu_scalp: float
    hu_cortical: float
    hu_diploe: float
    hu_csf: float
    hu_gm: float
    hu_wm: float
    hu_deep_gm: float
    hu_falx: float
    sulcal_phase: tuple[float, float, float, float, float, float]

    @property
    def rotation(self) -> np.ndarray:
        return rotation_matrix(self.yaw_deg, self.pitch_deg, self.roll_deg)

    @property
    def half_extent_xy(self) -> tuple[float, float]:
        """Half-extent (mm) of the head's in-plane bounding box about its centre (x, y)."""
        a, b = self.semi_lr, max(self.semi_ant, self.semi_post)
        t = np.deg2rad(abs(self.yaw_deg))
        return float(a * np.cos(t) + b * np.sin(t)), float(b * np.cos(t) + a * np.sin(t))


def draw_head(rng: np.random.Generator, scale: float = 1.0) -> HeadParams:
    """Draw the anatomy of one head (centre at the origin; the caller positions it). ``scale`` shrinks the head
    (used only when a scanner's maximum FOV is too small for the drawn head)."""
    s = float(rng.normal(1.0, 0.04)) * scale
    return HeadParams(
        centre=(0.0, 0.0, 0.0),
        yaw_deg=float(rng.uniform(-7, 7)),
        pitch_deg=float(rng.uniform(-6, 6)),
        roll_deg=float(rng.uniform(-3, 3)),
        semi_lr=float(rng.uniform(69, 77)) * s,
        semi_ant=float(rng.uniform(88, 96)) * s,
        semi_post=float(rng.uniform(90, 99)) * s,
        semi_sup=float(rng.uniform(76, 84)) * s,
        semi_inf=float(rng.uniform(95, 110)) * s,
        scalp_mm=float(rng.uniform(4.0, 6.5)),
        skull_mm=float(rng.uniform(5.0, 7.0)),
        csf_mm=float(rng.uniform(1.2, 3.5)),
        gm_mm=float(rng.uniform(4.0, 5.5)),
        floor_depth_mm=float(rng.uniform(36, 44)) * s,
        skull_base_mm=float(rng.uniform(5, 8)),
        ventricle_scale=float(rng.uniform(0.8, 1.5)),
        hu_scalp=float(rng.uniform(50, 65)),
        hu_cortical=float(rng.uniform(1100, 1500)),
        hu_diploe=float(rng.uniform(350, 650)),
        hu_csf=float(rng.uniform(2, 8)),
        hu_gm=float(rng.uniform(39, 44)),
        hu_wm=float(rng.uniform(28, 32)),
        hu_deep_gm=float(rng.uniform(34, 38)),
        hu_falx=float(rng.uniform(45, 70)),
        sulcal_phase=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 6)),  # type: ignore[arg-type]
    )


@dataclass
class HeadPhantom:
    """Noise-free HU (float32, z-y-x) on the full grid, the parenchymal fraction (brain tissue excluding CSF,
    0-1, float32) on the same grid, and the brain centroid (LPS, mm)."""

    hu: np.ndarray
    parenchyma: np.ndarray
    ventricles: np.ndarray  # ventricular CSF fraction (0-1, float32)
    brain_centroid: tuple[float, float, float]


# Deep structures in the head frame: (centre u, v, w), semi-axes (u, v, w); ventricles scale with ventricle_scale.
_VENTRICLES = (
    ((-9.0, -6.0, 13.0), (5.0, 21.0, 7.5)),
    ((9.0, -6.0, 13.0), (5.0, 21.0, 7.5)),
    ((-15.0, 20.0, 6.0), (5.5, 10.0, 7.0)),
    ((15.0, 20.0, 6.0), (5.5, 10.0, 7.0)),
    ((0.0, 2.0, -3.0), (1.6, 11.0, 7.0)),
)
_DEEP_GM = (
    ((-23.0, -2.0, 0.0), (7.0, 14.0, 9.0)),  # lentiform nuclei
    ((23.0, -2.0, 0.0), (7.0, 14.0, 9.0)),
    ((-10.0, 12.0, 1.0), (7.5, 12.0, 8.0)),  # thalami
    ((10.0, 12.0, 1.0), (7.5, 12.0, 8.0)),
)
LOCATIONS_HEAD_FRAME = {
    "basal_ganglia": ((23.0, -2.0, 0.0), (4.0, 6.0, 5.0)),  # centre (|u| mirrored by side), jitter SD
    "thalamus": ((11.0, 12.0, 2.0), (2.5, 4.0, 4.0)),
    "lobar": ((38.0, 0.0, 20.0), (6.0, 25.0, 12.0)),
}


def build_head(params: HeadParams, grid: Grid, chunk_slices: int = 3) -> HeadPhantom:
    """Render the noise-free phantom on ``grid`` (see the module docstring for the tissue model).

    The head's bounding box is rendered in chunks of ``chunk_slices`` slices so that temporaries stay in cache.
    """
    centre = np.asarray(params.centre, dtype=float)
    hx, hy = params.half_extent_xy
    crop = grid.box_around(centre - [hx + 4, hy + 4, 1e4], centre + [hx + 4, hy + 4, 1e4])
    hu = np.full(grid.shape, AIR_HU, dtype=np.float32)
    par = np.zeros(grid.shape, dtype=np.float32)
    vent = np.zeros(grid.shape, dtype=np.float32)
    z, y, x = grid.axes()
    sums = np.zeros(4)
    # conservative in-plane half-extent of the head's cross-section at height dz above/below its centre
    tilt = np.deg2rad(abs(params.pitch_deg) + abs(params.roll_deg))
    slack = np.sin(tilt) * max(params.semi_ant, params.semi_post, params.semi_lr) + 6.0
    for k0 in range(crop[0].start, crop[0].stop, chunk_slices):
        zs = z[k0 : min(k0 + chunk_slices, crop[0].stop)] - centre[2]
        dz = 0.0 if zs.min() <= 0 <= zs.max() else float(np.abs(zs).min())
        semi_z = params.semi_sup if zs.mean() > 0 else params.semi_inf
        shrink = float(np.sqrt(max(0.0, 1.0 - (max(dz - slack, 0.0) / semi_z) ** 2)))
        inner = grid.box_around(centre - [hx * shrink + 4, hy * shrink + 4, 0], centre + [hx * shrink + 4, hy * shrink + 4, 0])
        box = (slice(k0, min(k0 + chunk_slices, crop[0].stop)), inner[1], inner[2])
        hu[box], par[box], vent[box], f_ic = _render_box(params, grid, box)
        sums += (
            float((f_ic.sum(axis=(0, 1)) * x[box[2]]).sum()),
            float((f_ic.sum(axis=(0, 2)) * y[box[1]]).sum()),
            float((f_ic.sum(axis=(1, 2)) * z[box[0]]).sum()),
            float(f_ic.sum()),
        )
    total = sums[3] or 1.0
    centroid = (float(sums[0] / total), float(sums[1] / total), float(sums[2] / total))
    return HeadPhantom(hu=hu, parenchyma=par, ventricles=vent, brain_centroid=centroid)


def _render_box(p: HeadParams, grid: Grid, box: tuple[slice, slice, slice]):
    """HU, parenchymal fraction, ventricular fraction and intracranial fraction on one index box."""
    thick = grid.spacing_zyx[0]
    centre = np.asarray(p.centre, dtype=float)
    rot = p.rotation
    hy = p.half_extent_xy[1]
    u, v, w = head_frame(grid, box, centre, rot)

    semi_v = np.where(v < 0, np.float32(p.semi_ant), np.float32(p.semi_post))
    semi_w = np.where(w > 0, np.float32(p.semi_sup), np.float32(p.semi_inf))
    d_out, nz_local = ellipsoid_distance(u, v, w, np.float32(p.semi_lr), semi_v, semi_w)
    del semi_v, semi_w
    width = ramp_width(nz_local, thick)
    del nz_local

    # skull thicker frontally and occipitally
    vn = np.abs(v) / np.float32(max(p.semi_ant, p.semi_post))
    skull = np.float32(p.skull_mm) * (1.0 + 0.25 * vn)
    del vn
    d_inner = d_out + np.float32(p.scalp_mm) + skull  # signed distance to the inner table (ellipsoid part)

    # cranial floor (head frame w): orbital roofs higher anteriorly, posterior fossa lower
    vr = v / np.float32(p.semi_ant)
    w_floor = -np.float32(p.floor_depth_mm) + 14.0 * np.clip(-vr - 0.3, 0, 0.7) - 14.0 * np.clip(vr - 0.1, 0, 1)
    d_floor = w_floor - w  # > 0 below the floor
    del vr, w_floor
    floor_active = d_floor > d_inner
    d_ic = np.where(floor_active, d_floor, d_inner)
    width_ic = np.where(floor_active, np.float32(ramp_width(1.0, thick)), width)
    del floor_active

    f_head = inside_fraction(d_out, width)
    f_skull_out = inside_fraction(d_out + np.float32(p.scalp_mm), width)
    f_ic = inside_fraction(d_ic, width_ic)
    base_width = np.float32(ramp_width(1.0, thick))
    f_below_base = 1.0 - inside_fraction(d_floor - np.float32(p.skull_base_mm), base_width)
    f_bone = f_skull_out * (1.0 - f_ic) * (1.0 - f_below_base)
    f_soft_base = f_skull_out * (1.0 - f_ic) * f_below_base
    # diploe: more than ~1.8 mm from both tables
    f_dip = inside_fraction(d_out + np.float32(p.scalp_mm) + 0.25 * skull, width) * (
        1.0 - inside_fraction(d_inner - 0.25 * skull, width)
    )
    f_dip = np.minimum(f_dip, f_bone)
    del skull, d_inner, d_floor, f_below_base

    # gyral pattern: sulci widen the CSF rim, gyri thicken the cortex (separable in world axes: cheap)
    ph = p.sulcal_phase
    zc, yc, xc = grid.axes(box)
    s1 = (np.sin(zc * 0.19 + ph[2])[:, None, None] * np.sin(yc * 0.17 + ph[1])[None, :, None]) * np.sin(
        xc * 0.21 + ph[0]
    )[None, None, :]
    s2 = (np.sin(zc * 0.15 + ph[5])[:, None, None] * np.sin(yc * 0.23 + ph[4])[None, :, None]) * np.sin(
        xc * 0.13 + ph[3]
    )[None, None, :]
    csf = np.float32(p.csf_mm) + 9.0 * np.clip(s1 - 0.45, 0, None)
    gm = np.float32(p.gm_mm) * (1.0 + 0.35 * s2)
    del s1, s2
    f_gm = inside_fraction(d_ic + csf, width_ic)  # inside the pial surface
    f_wm = inside_fraction(d_ic + csf + gm, width_ic)
    del csf, gm, d_out, d_ic

    brain = p.hu_csf * (1.0 - f_gm) + p.hu_gm * (f_gm - f_wm) + p.hu_wm * f_wm
    parenchyma = f_gm.copy()

    # deep grey matter, ventricles, falx: head-frame ellipsoids evaluated on their own small boxes
    def local(c_head, radius):
        """Crop-relative index box around a head-frame point (radius mm) and the head-frame coordinates there."""
        c_world = centre + rot @ np.asarray(c_head, dtype=float)
        sub = grid.box_around(c_world - radius, c_world + radius)
        rel = tuple(
            slice(max(s.start - b.start, 0), max(min(s.stop, b.stop) - b.start, 0)) for s, b in zip(sub, box, strict=True)
        )
        abs_box = tuple(slice(r.start + b.start, r.stop + b.start) for r, b in zip(rel, box, strict=True))
        return rel, head_frame(grid, abs_box, centre, rot)

    for c, semi in _DEEP_GM:
        rel, (lu, lv, lw) = local(c, max(semi) + 6)
        d, nz = ellipsoid_distance(lu - c[0], lv - c[1], lw - c[2], *semi)
        f = inside_fraction(d, ramp_width(nz, thick)) * f_wm[rel]
        brain[rel] += f * (p.hu_deep_gm - brain[rel])
    f_vent = np.zeros_like(brain)
    vs = float(p.ventricle_scale)
    for c, semi in _VENTRICLES:
        sc = (semi[0] * vs, semi[1] * min(vs, 1.2), semi[2] * vs)
        cc = (c[0] * (0.7 + 0.3 * vs), c[1], c[2])
        rel, (lu, lv, lw) = local(cc, max(sc) + 6)
        d, nz = ellipsoid_distance(lu - cc[0], lv - cc[1], lw - cc[2], *sc)
        f_vent[rel] = np.maximum(f_vent[rel], inside_fraction(d, ramp_width(nz, thick)))
    f_vent *= f_gm
    brain += f_vent * (p.hu_csf - brain)
    parenchyma *= 1.0 - f_vent

    # falx with a thin CSF fissure, above the corpus callosum (lower posteriorly); a box around the midline
    mid = grid.box_around(
        centre - [abs(rot[0, 1]) * hy + 6, hy + 4, 1e4], centre + [abs(rot[0, 1]) * hy + 6, hy + 4, 1e4]
    )
    rel = tuple(
        slice(max(s.start - b.start, 0), max(min(s.stop, b.stop) - b.start, 0)) for s, b in zip(mid, box, strict=True)
    )
    mu, mv, mw = u[rel], v[rel], w[rel]
    falx_region = inside_fraction(np.float32(22.0) - 0.25 * np.clip(mv, 0, None) - mw, np.float32(ramp_width(1.0, thick)))
    au = np.abs(mu)
    f_fissure = inside_fraction(au - 1.6, PSF_WIDTH_MM) * falx_region * f_gm[rel]
    f_falx = inside_fraction(au - 0.6, PSF_WIDTH_MM) * falx_region * f_gm[rel]
    brain[rel] += f_fissure * (p.hu_csf - brain[rel])
    brain[rel] += f_falx * (p.hu_falx - brain[rel])
    parenchyma[rel] *= 1.0 - f_fissure
    del au, falx_region, f_fissure, f_falx, f_wm, mu, mv, mw

    hu_box = (
        AIR_HU * (1.0 - f_head)
        + p.hu_scalp * (f_head - f_skull_out)
        + p.hu_cortical * (f_bone - f_dip)
        + p.hu_diploe * f_dip
        + (p.hu_scalp + 3.0) * f_soft_base
        + brain * f_ic
    )
    parenchyma *= f_ic
    f_vent *= f_ic

    return hu_box, parenchyma, f_vent, f_ic

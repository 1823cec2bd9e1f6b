"""Supratentorial intracerebral haematoma with NCCT markers and intraventricular extension.

Shape: a randomly oriented ellipsoid (axis ratios 1 : 0.6-1 : 0.6-1) whose surface is perturbed by smooth
low-order angular harmonics; irregular haematomas get 2-4 lobules (smaller ellipsoids centred just inside the
margin), i.e. >= 2 focal margin irregularities. The blob is clipped to the brain parenchyma of its own
hemisphere (the falx bounds it) and scaled (two fixed-point iterations) so that the voxel mask hits the requested
volume. Base density 55-85 HU.

Markers (Supplemental Table 2), drawn into the density field:

* hypodensity: one focus strictly encapsulated (>= 2.5 mm from the margin), 12-24 HU darker;
* black hole: the same focus 33-45 HU darker than the surrounding clot (criterion: > 28 HU);
* swirl: a rounded region of brain-like density (30-40 HU) surrounded by clot on most sides; without a
  hypodensity it opens onto the margin through a narrow mouth (not encapsulated);
* blend: a straight, well-defined margin splits the clot into a hyperdense part (68-85 HU) and a part
  22-34 HU darker (criterion: > 18 HU);
* fluid level: a straight horizontal (coronal-plane) line; anterior (non-dependent, "above" in a supine patient)
  part hypodense to brain (12-24 HU), posterior (dependent) part hyperdense;
* heterogeneous density: 3-6 small encapsulated hypodense foci (12-20 HU darker) and mottling;
* intraventricular extension: blood (50-70 HU) layering in the dependent (posterior) part of the lateral
  ventricle(s). It is not part of the parenchymal haematoma mask (haematoma volumes exclude IVH).

Structure labels (uint8, :data:`STRUCTURE_LABELS`) record which component each voxel belongs to, so that tests
can check the marker criteria on the rendered image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from model_training.synthetic.anatomy import LOCATIONS_HEAD_FRAME, HeadParams, HeadPhantom
from model_training.synthetic.geometry import (
    PSF_WIDTH_MM,
    Grid,
    ellipsoid_distance,
    head_frame,
    inside_fraction,
    ramp_width,
    rotation_matrix,
)

STRUCTURE_LABELS = {
    "background": 0,
    "haematoma": 1,
    "hypodense_focus": 2,  # hypodensity or black hole
    "swirl": 3,
    "blend_hypo": 4,
    "fluid_hypo": 5,
    "heterogeneous_focus": 6,
    "ivh": 7,
}
LOCATION_WEIGHTS = {"basal_ganglia": 0.5, "thalamus": 0.2, "lobar": 0.3}
MODEL_FOV_HALF_MM = (56.0, 56.0, 80.0)  # the model's field of view (x, y, z half-widths) about the brain centroid
FOV_MARGIN_MM = 4.0


@dataclass
class HaematomaResult:
    mask: np.ndarray  # uint8 (z, y, x), 1 = parenchymal haematoma (partial-volume fraction >= 0.5)
    labels: np.ndarray  # uint8 (z, y, x), STRUCTURE_LABELS
    location: str
    side: str  # "left" / "right" (patient)
    centre_lps: tuple[float, float, float]
    density_hu: float


def _crop_rel(sub, box):
    return tuple(
        slice(max(s.start - b.start, 0), max(min(s.stop, b.stop) - b.start, 0)) for s, b in zip(sub, box, strict=True)
    )


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def render_haematoma(
    rng: np.random.Generator,
    grid: Grid,
    head: HeadParams,
    phantom: HeadPhantom,
    volume_ml: float,
    markers: dict[str, int],
    location: str | None = None,
) -> HaematomaResult:
    """Draw a haematoma of about ``volume_ml`` and paint it (and IVH) into ``phantom.hu`` in place."""
    if location is None:
        names = list(LOCATION_WEIGHTS)
        location = names[int(rng.choice(len(names), p=list(LOCATION_WEIGHTS.values())))]
    if location not in LOCATIONS_HEAD_FRAME:
        raise ValueError(f"unknown haematoma location {location!r}")
    sign = 1.0 if rng.random() < 0.5 else -1.0  # +u = patient left
    rot_head = head.rotation
    centre_head = np.asarray(head.centre)

    # shape in the haematoma frame: axes ratios, orientation, harmonics, lobules
    ratios = np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)])
    rng.shuffle(ratios)
    if location != "lobar":  # deep haematomas are elongated antero-posteriorly
        ratios = np.sort(ratios)[[1, 2, 0]]
    unit_semi = ratios / np.cbrt(ratios.prod())  # unit-volume-equivalent radius 1
    rot_h = rot_head @ rotation_matrix(*rng.uniform(-25, 25, 3))
    irregular = bool(markers["irregular_shape"])
    n_harm = 6
    harm_dirs = np.array([_unit(rng) for _ in range(n_harm)])
    harm_amp = rng.normal(0, 0.10 if irregular else 0.035, n_harm)
    harm_phase = rng.uniform(0, 2 * np.pi, n_harm)
    lobules = []
    if irregular:
        for _ in range(int(rng.integers(2, 5))):
            n = _unit(rng)
            lobules.append((n, rng.uniform(0.28, 0.42), rng.uniform(0.85, 1.0)))

    radius_mm = float(np.cbrt(volume_ml * 1000.0 * 3.0 / (4.0 * np.pi)))
    extent = radius_mm * float(unit_semi.max()) * 1.25 + 3.0

    # centre: anatomical location + jitter, kept inside the model FOV about the brain centroid and in parenchyma
    loc_c, loc_sd = LOCATIONS_HEAD_FRAME[location]
    c_head = np.array(loc_c) + rng.normal(0, 1, 3) * np.array(loc_sd)
    c_head[0] = sign * abs(c_head[0])
    centre = centre_head + rot_head @ c_head
    brain_c = np.asarray(phantom.brain_centroid)
    half = np.asarray(MODEL_FOV_HALF_MM) - FOV_MARGIN_MM - extent
    centre = np.clip(centre, brain_c - np.maximum(half, 0), brain_c + np.maximum(half, 0))

    sub = grid.box_around(centre - extent - 3, centre + extent + 3)
    x1, y1, z1 = head_frame(grid, sub, centre, rot_h)  # haematoma frame coordinates (mm)
    # the falx and the interhemispheric fissure bound a parenchymal haematoma: it stays in its own hemisphere
    u_head = head_frame(grid, sub, centre_head, rot_head)[0]
    par = phantom.parenchyma[sub] * inside_fraction(np.float32(1.0) - np.float32(sign) * u_head, PSF_WIDTH_MM)
    thick = grid.spacing_zyx[0]
    voxel_ml = float(np.prod(grid.spacing_zyx)) / 1000.0
    rn = np.sqrt(x1 * x1 + y1 * y1 + z1 * z1) + np.float32(1e-6)
    pert = np.zeros_like(rn)
    for k in range(n_harm):
        proj = (x1 * harm_dirs[k, 0] + y1 * harm_dirs[k, 1] + z1 * harm_dirs[k, 2]) / rn
        pert += np.float32(harm_amp[k]) * np.sin(np.float32(3.0) * proj + np.float32(harm_phase[k]))

    def level_set(scale: float):
        semi = unit_semi * scale
        d, nz = ellipsoid_distance(x1, y1, z1, *semi)
        d = d - pert * np.float32(scale)
        for n, rel_r, out in lobules:
            r_dir = 1.0 / np.sqrt(((n / semi) ** 2).sum())  # main radius along n
            c = n * r_dir * out
            rl = rel_r * scale
            dl, nzl = ellipsoid_distance(x1 - c[0], y1 - c[1], z1 - c[2], rl, rl, rl)
            take = dl < d
            d = np.where(take, dl, d)
            nz = np.where(take, nzl, nz)
        return d, ramp_width(nz, thick)

    scale = radius_mm
    for _ in range(3):
        d, width = level_set(scale)
        frac = inside_fraction(d, width) * np.clip(par * 1.5, 0, 1)
        vol = float((frac >= 0.5).sum()) * voxel_ml
        if vol <= 0:
            scale *= 1.5
            continue
        scale *= float(np.clip(np.cbrt(volume_ml / vol), 0.7, 1.4))
    d, width = level_set(scale)
    frac = inside_fraction(d, width) * np.clip(par * 1.5, 0, 1)
    mask_box = frac >= 0.5
    if not mask_box.any():
        raise RuntimeError("haematoma fell outside the brain parenchyma")
    # mm inside the margin of the final (parenchyma-clipped) mask, so that encapsulated foci stay encapsulated
    depth = ndimage.distance_transform_edt(mask_box, sampling=grid.spacing_zyx).astype(np.float32)

    labels_box = np.zeros(frac.shape, dtype=np.uint8)
    labels_box[mask_box] = STRUCTURE_LABELS["haematoma"]
    rho = float(rng.uniform(55, 85))
    dens = np.full(frac.shape, rho, dtype=np.float32)
    inplane = np.float32(PSF_WIDTH_MM)

    def paint(f: np.ndarray, value: float | np.ndarray, label: str) -> None:
        nonlocal dens
        dens += f * (value - dens)
        labels_box[mask_box & (f >= 0.5)] = STRUCTURE_LABELS[label]

    if markers["blend"] or markers["fluid_level"]:
        if markers["blend"]:
            a = rng.uniform(0, 2 * np.pi)
            hyper = float(rng.uniform(68, 85))
            low = hyper - float(rng.uniform(22, 34))
            normal = np.array([np.cos(a), np.sin(a), 0.0])
            label = "blend_hypo"
        else:  # fluid level: horizontal line, hypodense anterior (non-dependent) part
            hyper = float(min(rho + rng.uniform(0, 8), 90.0))
            low = float(rng.uniform(12, 24))
            normal = np.array([0.0, -1.0, 0.0])  # points anteriorly (-y in LPS)
            label = "fluid_hypo"
        zz, yy, xx = grid.axes(sub)
        offset = float(rng.uniform(-0.3, 0.2)) * scale
        s_plane = (
            (xx[None, None, :] - centre[0]) * normal[0] + (yy[None, :, None] - centre[1]) * normal[1] - offset
        ).astype(np.float32)
        dens[:] = hyper
        paint(inside_fraction(-s_plane, inplane) * np.ones_like(dens), low, label)
        rho = hyper
    if markers["heterogeneous_density"]:
        for _ in range(int(rng.integers(3, 7))):
            c = _unit(rng) * rng.uniform(0.0, 0.6) * scale
            r = float(rng.uniform(2.5, 5.0))
            dl, nzl = ellipsoid_distance(x1 - c[0], y1 - c[1], z1 - c[2], r, r, r)
            f = inside_fraction(dl, ramp_width(nzl, thick)) * inside_fraction(2.0 - depth, inplane)
            paint(f, dens - float(rng.uniform(12, 20)), "heterogeneous_focus")
        zz = np.sin(x1 * 0.4 + rng.uniform(0, 6)) * np.sin(y1 * 0.35 + rng.uniform(0, 6)) * np.sin(z1 * 0.5)
        dens += np.float32(4.0) * zz.astype(np.float32)
    if markers["swirl"]:
        n = _unit(rng)
        r_dir = 1.0 / np.sqrt(((n / (unit_semi * scale)) ** 2).sum())
        r = max(float(rng.uniform(0.3, 0.45)) * scale, 3.0)
        # the region lies within the clot and, without a hypodensity, opens onto the margin through a narrow mouth:
        # a brain-density region mostly outside the clot would read as a dent of the margin, not as a swirl
        touching = r_dir - float(rng.uniform(0.8, 0.95)) * r
        depth_c = touching
        if markers["hypodensity"]:
            depth_c = float(rng.uniform(0.2 * r_dir, max(touching, 0.2 * r_dir)))
        c = n * max(depth_c, 0.0)
        dl, nzl = ellipsoid_distance(x1 - c[0], y1 - c[1], z1 - c[2], r, r * 0.8, r * 0.9)
        paint(inside_fraction(dl, ramp_width(nzl, thick)), float(rng.uniform(30, 40)), "swirl")
    if markers["hypodensity"]:
        delta = float(rng.uniform(33, 45)) if markers["black_hole"] else float(rng.uniform(12, 24))
        c = _unit(rng) * rng.uniform(0.0, 0.2) * scale
        # at least ~5 mm in-plane and ~7 mm in z, so that one 5 mm slice cuts through it fully
        r = max(float(rng.uniform(0.3, 0.42)) * scale, 5.0)
        dl, nzl = ellipsoid_distance(x1 - c[0], y1 - c[1], z1 - c[2], r, r * 0.85, max(r, 7.0))
        f = inside_fraction(dl, ramp_width(nzl, thick)) * inside_fraction(3.0 - depth, inplane)
        paint(f, rho - delta, "hypodense_focus")

    hu_box = phantom.hu[sub]
    hu_box += frac * (dens - hu_box)
    mask = np.zeros(grid.shape, dtype=np.uint8)
    mask[sub] = mask_box
    labels = np.zeros(grid.shape, dtype=np.uint8)
    labels[sub] = labels_box

    if markers["ivh"]:
        paint_ivh(rng, grid, phantom, labels, sign)

    side = "left" if sign > 0 else "right"
    centre_lps = (float(centre[0]), float(centre[1]), float(centre[2]))
    return HaematomaResult(mask, labels, location, side, centre_lps, rho)


def paint_ivh(rng, grid: Grid, phantom: HeadPhantom, labels: np.ndarray, sign: float) -> None:
    """Blood layering in the posterior (dependent) part of the lateral ventricle(s); ``sign`` +1 = the left side."""
    vent = phantom.ventricles
    zs = np.flatnonzero(vent.any(axis=(1, 2)))
    ys = np.flatnonzero(vent.any(axis=(0, 2)))
    if zs.size == 0:
        return
    box = (slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(None))
    zz, yy, xx = grid.axes(box)
    hc = np.asarray(phantom.brain_centroid)
    lateral = (xx - hc[0]) * sign > 0 if rng.random() < 0.5 else np.ones_like(xx, dtype=bool)
    level = float(hc[1] + rng.uniform(-5, 25))  # blood posterior to this y (mm)
    f_level = inside_fraction((level - yy)[None, :, None].astype(np.float32), PSF_WIDTH_MM)
    f = vent[box] * f_level * lateral[None, None, :]
    density = np.float32(rng.uniform(50, 70))
    hu = phantom.hu[box]
    hu += f * (density - hu)
    lab = labels[box]
    lab[(f >= 0.5) & (lab == 0)] = STRUCTURE_LABELS["ivh"]

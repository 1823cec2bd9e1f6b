"""Haemorrhage mimics painted into the noise-free phantom: what makes an ICH model report blood on a normal head.

Each mimic is drawn with its own probability from the case's mimic stream and painted in place into
``phantom.hu`` (HU, z-y-x) inside a small index box, in the head frame (u = patient left, v = posterior,
w = superior; mm, see :func:`model_training.synthetic.geometry.head_frame`). None of them is haemorrhage: the
ground-truth mask stays as it is. Densities follow the usual CT appearance:

* physiological calcification: choroid plexus in the atria (100-350 HU), pineal (80-300 HU), globus pallidus
  (60-160 HU), falx plaques (150-450 HU);
* dense dural venous sinuses (superior sagittal, straight, transverse: 55-78 HU) and a dense MCA (55-75 HU);
* partial-volume bone under the vertex (+15-45 HU over the 8 mm below the inner table);
* a posterior fossa: cerebellar hemispheres and brain stem (33-39 HU) in an occipital bone shell, petrous bones,
  and the streak ("Hounsfield bar") artefact between them (+-10-30 HU bands);
* white-matter hypodensity (periventricular caps, -4 to -10 HU) and an old infarct (encephalomalacia, 8-18 HU);
* atrophy (wider ventricles and sulci) is applied to the head parameters before rendering (:func:`atrophic`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from model_training.synthetic.anatomy import HeadParams, HeadPhantom
from model_training.synthetic.geometry import (
    PSF_WIDTH_MM,
    Grid,
    ellipsoid_distance,
    head_frame,
    inside_fraction,
    ramp_width,
)

PROBABILITIES = {
    "choroid_plexus_calcification": 0.6,
    "pineal_calcification": 0.5,
    "basal_ganglia_calcification": 0.15,
    "falx_calcification": 0.3,
    "dense_sinuses": 0.7,
    "dense_mca": 0.15,
    "vertex_partial_volume": 0.5,
    "posterior_fossa": 0.85,
    "white_matter_hypodensity": 0.25,
    "old_infarct": 0.12,
    "atrophy": 0.25,
}


@dataclass
class MimicSet:
    """Which mimics a case carries (names of :data:`PROBABILITIES`)."""

    present: dict[str, bool] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(k for k, v in self.present.items() if v)


def draw_mimics(rng: np.random.Generator, enabled: bool = True) -> MimicSet:
    """Draw every mimic's presence (always the same number of draws, so later draws do not shift)."""
    draws = {name: bool(rng.random() < p) for name, p in PROBABILITIES.items()}
    return MimicSet({k: (v and enabled) for k, v in draws.items()})


def atrophic(head: HeadParams, rng: np.random.Generator) -> HeadParams:
    """Wider ventricles and subarachnoid spaces (an older brain)."""
    return dataclasses.replace(
        head,
        ventricle_scale=head.ventricle_scale * float(rng.uniform(1.2, 1.5)),
        csf_mm=head.csf_mm + float(rng.uniform(1.5, 3.5)),
    )


class _Painter:
    """Paints head-frame ellipsoids and tubes into the phantom's HU, on small boxes."""

    def __init__(self, grid: Grid, head: HeadParams, phantom: HeadPhantom):
        self.grid, self.head, self.hu = grid, head, phantom.hu
        self.par = phantom.parenchyma
        self.centre = np.asarray(head.centre, dtype=float)
        self.rot = head.rotation
        self.thick = grid.spacing_zyx[0]

    def _box(self, c_head: np.ndarray, radius: float):
        c_world = self.centre + self.rot @ np.asarray(c_head, dtype=float)
        box = self.grid.box_around(c_world - radius, c_world + radius)
        if any(s.stop <= s.start for s in box):
            return None, None
        return box, head_frame(self.grid, box, self.centre, self.rot)

    def ellipsoid(self, c, semi, value_hu: float, *, within: str = "any", delta: bool = False) -> None:
        """Blend ``value_hu`` (or add it when ``delta``) over an ellipsoid; ``within``: "any", "parenchyma"
        (weighted by the parenchymal fraction) or "soft" (only where the current HU is below 300)."""
        box, frame = self._box(c, max(semi) + 4)
        if box is None:
            return
        u, v, w = frame
        d, nz = ellipsoid_distance(u - c[0], v - c[1], w - c[2], *semi)
        f = inside_fraction(d, ramp_width(nz, self.thick))
        hu = self.hu[box]
        if within == "parenchyma":
            f = f * self.par[box]
        elif within == "soft":
            f = f * (hu < 300)
        if delta:
            hu += f * np.float32(value_hu)
        else:
            hu += f * (np.float32(value_hu) - hu)

    def tube(self, points: np.ndarray, radius: float, value_hu: float) -> None:
        """A tube through head-frame ``points`` (k, 3) as overlapping spheres every ~radius mm."""
        dense = [points[0]]
        for a, b in zip(points[:-1], points[1:], strict=True):
            n = max(1, int(np.linalg.norm(b - a) / max(radius, 1.0)))
            dense += [a + (b - a) * t for t in np.linspace(0, 1, n + 1)[1:]]
        for p in dense:
            self.ellipsoid(p, (radius, radius, radius), value_hu, within="soft")


def _inner_semis(head: HeadParams) -> tuple[float, float, float, float, float]:
    """Semi-axes (mm) of the inner table: lr, anterior, posterior, superior, inferior."""
    t = head.scalp_mm + head.skull_mm * 1.1
    return (head.semi_lr - t, head.semi_ant - t * 1.1, head.semi_post - t * 1.1, head.semi_sup - t,
            head.semi_inf - t)


def paint_mimics(rng: np.random.Generator, grid: Grid, head: HeadParams, phantom: HeadPhantom,
                 mimics: MimicSet) -> None:
    """Paint the present mimics (see the module docstring) into ``phantom.hu`` in place."""
    p = _Painter(grid, head, phantom)
    on = mimics.present
    vs = 0.7 + 0.3 * head.ventricle_scale
    lr, ant, post, sup, _inf = _inner_semis(head)
    floor = head.floor_depth_mm
    if on.get("posterior_fossa"):
        _posterior_fossa(rng, p, floor, post)
    if on.get("choroid_plexus_calcification"):
        for side in (-1.0, 1.0):
            if rng.random() < 0.85:
                c = np.array([side * 15.0 * vs, 20.0 + rng.uniform(-3, 3), 6.0 + rng.uniform(-2, 2)])
                r = float(rng.uniform(2.0, 4.0))
                p.ellipsoid(c, (r, r * 1.3, r), float(rng.uniform(100, 350)))
    if on.get("pineal_calcification"):
        r = float(rng.uniform(1.8, 3.0))
        p.ellipsoid(np.array([0.0, 21.0 + rng.uniform(-2, 2), -1.0 + rng.uniform(-2, 2)]), (r, r, r),
                    float(rng.uniform(80, 300)))
    if on.get("basal_ganglia_calcification"):
        for side in (-1.0, 1.0):
            r = float(rng.uniform(2.0, 4.0))
            p.ellipsoid(np.array([side * 18.0, -2.0, -1.0]), (r, r * 1.4, r), float(rng.uniform(60, 160)))
    if on.get("falx_calcification"):
        for _ in range(int(rng.integers(1, 4))):
            c = np.array([0.0, rng.uniform(-40, 40), rng.uniform(28, 50)])
            p.ellipsoid(c, (1.2, rng.uniform(4, 9), rng.uniform(3, 6)), float(rng.uniform(150, 450)))
    if on.get("dense_sinuses"):
        hu = float(rng.uniform(55, 78))
        r = float(rng.uniform(2.5, 4.0))
        theta = np.linspace(-0.35 * np.pi, 0.62 * np.pi, 14)  # from frontal-superior over the vertex to occipital
        ss = np.stack([np.zeros_like(theta), np.sin(theta) * np.where(theta > 0, post, ant),
                       np.cos(theta) * sup], axis=1) * 0.96
        p.tube(ss, r, hu)
        torcula = np.array([0.0, post * 0.93, -floor + 12.0])
        for side in (-1.0, 1.0):
            p.tube(np.array([torcula, torcula + [side * 25, -6, -3], torcula + [side * 45, -22, -8]]), r * 0.9, hu)
        p.tube(np.array([[0.0, 15.0, 8.0], torcula]), r * 0.7, hu)  # straight sinus
    if on.get("dense_mca"):
        side = 1.0 if rng.random() < 0.5 else -1.0
        pts = np.array([[side * 8.0, -12.0, -6.0], [side * 25.0, -10.0, -5.0], [side * 42.0, -6.0, -2.0]])
        p.tube(pts, float(rng.uniform(1.4, 2.2)), float(rng.uniform(55, 75)))
    if on.get("vertex_partial_volume"):
        _vertex_partial_volume(rng, p, lr, ant, post, sup)
    if on.get("white_matter_hypodensity"):
        d = -float(rng.uniform(4, 10))
        for side in (-1.0, 1.0):
            for c in ((side * 13.0 * vs, -26.0, 12.0), (side * 16.0 * vs, 30.0, 9.0), (side * 20.0, 0.0, 24.0)):
                p.ellipsoid(np.array(c), (9.0, 11.0, 9.0), d, within="parenchyma", delta=True)
    if on.get("old_infarct"):
        side = 1.0 if rng.random() < 0.5 else -1.0
        c = np.array([side * (lr - 14.0), rng.uniform(-35, 35), rng.uniform(5, 35)])
        r = float(rng.uniform(8, 16))
        p.ellipsoid(c, (r * 0.7, r, r * 0.8), float(rng.uniform(8, 18)), within="parenchyma")


def _posterior_fossa(rng: np.random.Generator, p: _Painter, floor: float, post: float) -> None:
    """Cerebellum and brain stem below the tentorium in an occipital bone shell, petrous bones, streaks."""
    w0 = -floor - float(rng.uniform(10, 16))
    v0 = min(34.0, post - 30.0)
    hemis = [np.array([s * 22.0, v0, w0]) for s in (-1.0, 1.0)]
    semi = (float(rng.uniform(20, 25)), float(rng.uniform(18, 22)), float(rng.uniform(14, 18)))
    bone = float(rng.uniform(900, 1400))
    for c in hemis:
        p.ellipsoid(c, tuple(s + 6.0 for s in semi), bone, within="soft")
    for s in (-1.0, 1.0):
        p.ellipsoid(np.array([s * 32.0, 6.0, w0 + 8.0]), (18.0, 7.0, 7.0), bone)  # petrous ridges
    tissue = float(rng.uniform(33, 39))
    for c in hemis:
        p.ellipsoid(c, semi, tissue)
    p.ellipsoid(np.array([0.0, 12.0, w0 + 6.0]), (10.0, 10.0, 22.0), tissue - 2.0)  # brain stem
    p.ellipsoid(np.array([0.0, 24.0, w0 + 4.0]), (4.0, 3.0, 5.0), float(rng.uniform(3, 8)))  # fourth ventricle
    # Hounsfield bars: alternating bands across the fossa between the petrous bones
    box, frame = p._box(np.array([0.0, v0, w0]), 48.0)
    if box is None:
        return
    u, v, w = frame
    d = np.full(u.shape, np.inf, dtype=np.float32)
    for c in hemis:
        dd, _ = ellipsoid_distance(u - c[0], v - c[1], w - c[2], *semi)
        d = np.minimum(d, dd)
    f = inside_fraction(d, np.float32(PSF_WIDTH_MM))
    angle = float(rng.uniform(-0.3, 0.3))
    along = v * np.float32(np.cos(angle)) + u * np.float32(np.sin(angle))
    amp = float(rng.uniform(10, 30))
    bands = np.sin(along * np.float32(2 * np.pi / rng.uniform(5, 9)) + np.float32(rng.uniform(0, 6)))
    bands *= np.exp(-np.abs(v - np.float32(v0 - 15.0)) / np.float32(12.0))  # strongest near the petrous bones
    p.hu[box] += f * np.float32(amp) * bands.astype(np.float32)


def _vertex_partial_volume(rng: np.random.Generator, p: _Painter, lr: float, ant: float, post: float,
                           sup: float) -> None:
    """Brain that reads hyperdense just under the inner table near the vertex (partial volume of 5 mm slices)."""
    box, frame = p._box(np.array([0.0, 0.0, sup * 0.8]), max(lr, ant, post) + 4.0)
    if box is None:
        return
    u, v, w = frame
    semi_v = np.where(v < 0, np.float32(ant), np.float32(post))
    d, _ = ellipsoid_distance(u, v, w, np.float32(lr), semi_v, np.float32(sup))
    depth = float(rng.uniform(5, 9))
    ramp = np.clip(1.0 + d / np.float32(depth), 0, 1) * (d <= 0)
    ramp *= np.clip((w - np.float32(0.55 * sup)) / np.float32(0.2 * sup), 0, 1)
    p.hu[box] += (ramp * np.float32(rng.uniform(15, 45)) * p.par[box]).astype(np.float32)

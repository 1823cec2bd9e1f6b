"""One synthetic case: head phantom + haematoma + CT noise + clinical variables + follow-up volume.

Determinism: case ``index`` of cohort ``seed`` draws from ``SeedSequence(seed, spawn_key=(index,))`` and is
therefore identical whatever the cohort size. That sequence is split into independent child streams
(clinical, scanner, anatomy, haematoma, noise, growth), so an override of one component (say the haematoma
volume) leaves the others unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_training.labels import expansion_label
from model_training.synthetic.anatomy import HeadParams, build_head, draw_head
from model_training.synthetic.geometry import Grid
from model_training.synthetic.growth import (
    draw_baseline_volume_ml,
    draw_followup_ml,
    draw_onset_hours,
    expansion_probability,
    image_risk,
)
from model_training.synthetic.haematoma import paint_ivh, render_haematoma
from model_training.synthetic.markers import draw_markers, normalise_markers
from model_training.synthetic.mimics import atrophic, draw_mimics, paint_mimics
from model_training.synthetic.scanners import (
    MATRIX,
    SCANNERS_BY_KEY,
    SLICE_THICKNESS_MM,
    ScannerProfile,
    draw_fov_mm,
    draw_n_slices,
    draw_scanner,
    pixel_spacing_mm,
)

ADMISSION_RANGE = (dt.date(2012, 2, 1), dt.date(2019, 10, 31))  # the paper's recruitment period
HU_MIN, HU_MAX = -1024, 3071
#: default range of a scan's CT noise SD (HU): a standard 5 mm brain reconstruction; real scans span about 2-9 HU
#: (thin slices, low dose, smooth kernels), which a cohort drawn with ``noise_sd_range_hu`` covers
NOISE_SD_RANGE_HU = (4.0, 5.0)
ALLOWED_OVERRIDES = frozenset(
    {"haematoma_volume_ml", "n_slices", "markers", "scanner", "fov_mm", "location", "onset_to_ct_hours", "noise_sd_hu",
     "noise_sd_range_hu", "ich_free", "ivh_only", "mimics"}
)


@dataclass
class SyntheticCase:
    """A rendered case. Arrays are (z, y, x); z increases superiorly (slice 0 is the most inferior).

    ``origin_xyz`` is the LPS position (mm) of the centre of voxel (0, 0, 0); axial slices have identity
    orientation (rows along +x = patient left, columns along +y = posterior).
    """

    seed: int
    index: int
    hu: np.ndarray  # int16 HU
    mask: np.ndarray  # uint8 ground-truth parenchymal haematoma
    structure_labels: np.ndarray  # uint8, see haematoma.STRUCTURE_LABELS
    spacing_zyx: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    scanner: ScannerProfile
    fov_mm: float
    markers: dict[str, int]  # seven NCCT markers + "ivh"
    location: str  # "none" for a head without parenchymal haemorrhage
    side: str  # "none" for a head without parenchymal haemorrhage
    baseline_volume_ml: float  # mask voxel count x voxel volume; 0 for a head without parenchymal haemorrhage
    followup_volume_ml: float | None  # None without a haematoma (no expansion label)
    target_volume_ml: float
    onset_to_ct_hours: float
    admission_date: dt.date
    acquisition_time: dt.time
    brain_centroid_lps: tuple[float, float, float]
    haematoma_centre_lps: tuple[float, float, float]
    head: HeadParams = field(repr=False)
    mimics: tuple[str, ...] = ()  # haemorrhage mimics painted into the head (model_training.synthetic.mimics)
    risk_true: float | None = None  # the growth model's expansion probability for this case
    risk_image: float | None = None  # the same averaged over the onset-time prior (what the image can show)
    scan: str = "baseline"  # "baseline" or "followup" (model_training.synthetic.followup)
    hours_after_baseline: float = 0.0  # follow-up scans: acquisition time after the baseline scan (hours)
    # (ich_free_fraction, ivh_only_fraction, overrides) this case was drawn with, so its follow-up repeats them
    draw_args: tuple[float, float, dict[str, Any]] = field(default=(0.0, 0.15, {}), repr=False)
    noise_sd_hu: float = 0.0  # SD of the CT noise added to this scan (HU, before its 2 x 2 in-plane correlation)

    @property
    def has_haematoma(self) -> bool:
        return self.baseline_volume_ml > 0

    @property
    def origin(self) -> tuple[float, float, float]:
        """Alias of ``origin_xyz``: LPS (mm) of the centre of voxel (0, 0, 0), as SimpleITK's GetOrigin()."""
        return self.origin_xyz

    @property
    def case_id(self) -> str:
        return f"SYN{self.index + 1:04d}"

    @property
    def label(self) -> int | None:
        """Expansion label (0/1); None for a head without parenchymal haemorrhage."""
        if self.followup_volume_ml is None or not self.has_haematoma:
            return None
        return int(expansion_label(self.baseline_volume_ml, self.followup_volume_ml))

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_zyx)) / 1000.0

    @property
    def mask_volume_ml(self) -> float:
        """Volume of this scan's mask (mL): the baseline volume for a baseline scan, the follow-up haematoma's
        for a follow-up scan."""
        return round(float(self.mask.sum(dtype=np.int64)) * self.voxel_volume_ml, 4)

    @property
    def acquired_at(self) -> dt.datetime:
        """Acquisition date and time of this scan (written to DICOM): the baseline's admission date and
        acquisition time, plus ``hours_after_baseline`` for a follow-up scan."""
        start = dt.datetime.combine(self.admission_date, self.acquisition_time)
        return start + dt.timedelta(hours=self.hours_after_baseline)


def case_seed_sequence(seed: int, index: int) -> np.random.SeedSequence:
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be >= 0")
    return np.random.SeedSequence(seed, spawn_key=(index,))


def _scaled_head(head: HeadParams, factor: float) -> HeadParams:
    return dataclasses.replace(
        head,
        semi_lr=head.semi_lr * factor,
        semi_ant=head.semi_ant * factor,
        semi_post=head.semi_post * factor,
        semi_sup=head.semi_sup * factor,
        semi_inf=head.semi_inf * factor,
        floor_depth_mm=head.floor_depth_mm * factor,
    )


def ct_noise(rng: np.random.Generator, shape: tuple[int, int, int], sd_hu: float) -> np.ndarray:
    """CT-like noise with in-plane correlation: white Gaussian noise averaged over 2 x 2 pixels (correlation
    length ~1 pixel, like a standard soft-tissue kernel); the sum of four unit-variance samples is halved, so the
    standard deviation stays ``sd_hu``."""
    nz, ny, nx = shape
    white = rng.standard_normal((nz, ny + 1, nx + 1), dtype=np.float32)
    out = white[:, :-1, :-1] + white[:, 1:, :-1]
    out += white[:, :-1, 1:]
    out += white[:, 1:, 1:]
    out *= np.float32(sd_hu / 2.0)
    return out


@dataclass(frozen=True)
class FollowupPlan:
    """How :func:`render_case` renders a follow-up scan of a case: the haematoma volume to reach (mL; None for a
    head without parenchymal haemorrhage), the baseline's mask volume (mL), ``place(rng, head, fov_mm)``, which
    draws the new head position and the scan's delay from the follow-up stream and returns
    ``(head, hours_after_baseline)``, and the haematoma renderer (``render_haematoma``'s signature)."""

    target_volume_ml: float | None
    baseline_volume_ml: float
    place: Any
    render_haematoma: Any  # (rng, grid, head, phantom, target_ml, markers, location) -> HaematomaResult


def generate_case(seed: int, index: int, *, ich_free_fraction: float = 0.0, ivh_only_fraction: float = 0.15,
                  **overrides: Any) -> SyntheticCase:
    """Render case ``index`` of the cohort drawn with ``seed``.

    ``ich_free_fraction``: probability that the case is a head without parenchymal haemorrhage (empty mask, no
    expansion label); ``ivh_only_fraction``: the share of those with intraventricular blood only.
    Overrides (all optional): ``haematoma_volume_ml`` (target, mL), ``n_slices``, ``markers`` (dict, partial
    allowed; completed with zeros and made consistent), ``scanner`` (a key of ``SCANNERS_BY_KEY``), ``fov_mm``,
    ``location`` ("basal_ganglia", "thalamus", "lobar"), ``onset_to_ct_hours``, ``noise_sd_hu`` (HU), or
    ``noise_sd_range_hu`` (low, high: the SD drawn uniformly from it instead of :data:`NOISE_SD_RANGE_HU`), ``ich_free``
    and ``ivh_only`` (bool), ``mimics`` (bool: paint haemorrhage mimics, default True).
    """
    return render_case(seed, index, ich_free_fraction, ivh_only_fraction, overrides, None)


def render_case(seed: int, index: int, ich_free_fraction: float, ivh_only_fraction: float,
                overrides: dict[str, Any], followup: FollowupPlan | None) -> SyntheticCase:
    """:func:`generate_case`, or with ``followup`` the follow-up scan of the same case: the same draws (head,
    mimics, haematoma shape, markers, clinical variables), the head moved by ``followup.place`` and the haematoma
    rendered at ``followup.target_volume_ml``, with the scanner noise of a new acquisition."""
    unknown = set(overrides) - ALLOWED_OVERRIDES
    if unknown:
        raise TypeError(f"unknown override(s): {sorted(unknown)}")
    if not 0.0 <= ich_free_fraction <= 1.0 or not 0.0 <= ivh_only_fraction <= 1.0:
        raise ValueError("ich_free_fraction and ivh_only_fraction must be within 0-1")
    # spawn(8)[:7] equals spawn(7): the follow-up stream leaves the baseline's draws unchanged
    streams = [np.random.default_rng(s) for s in case_seed_sequence(seed, index).spawn(8)]
    r_clin, r_scan, r_anat, r_haem, r_noise, r_growth, r_mimic, r_follow = streams
    u_free, u_ivh = r_mimic.random(2)
    ich_free = bool(overrides.get("ich_free", u_free < ich_free_fraction))
    ivh_only = ich_free and bool(overrides.get("ivh_only", u_ivh < ivh_only_fraction))
    mimic_set = draw_mimics(r_mimic, enabled=bool(overrides.get("mimics", True)))

    # clinical variables (drawn in a fixed order, then overridden)
    markers = draw_markers(r_clin)
    target_ml = draw_baseline_volume_ml(r_clin)
    onset = draw_onset_hours(r_clin)
    days = (ADMISSION_RANGE[1] - ADMISSION_RANGE[0]).days
    admission = ADMISSION_RANGE[0] + dt.timedelta(days=int(r_clin.integers(0, days + 1)))
    seconds = int(r_clin.integers(0, 86400))
    acq_time = dt.time(seconds // 3600, (seconds // 60) % 60, seconds % 60)
    if "markers" in overrides:
        markers = normalise_markers(dict(overrides["markers"]))
    target_ml = float(overrides.get("haematoma_volume_ml", target_ml))
    onset = float(overrides.get("onset_to_ct_hours", onset))
    if not 0.05 <= target_ml <= 200:
        raise ValueError("haematoma_volume_ml must be within 0.05-200 mL")

    # scanner and anatomy
    scanner = draw_scanner(r_scan)
    if "scanner" in overrides:
        scanner = SCANNERS_BY_KEY[overrides["scanner"]]
    n_slices = draw_n_slices(r_scan, scanner)
    n_slices = int(overrides.get("n_slices", n_slices))
    if not 20 <= n_slices <= 60:
        raise ValueError("n_slices must be within 20-60")
    head = draw_head(r_anat)
    offset_xy = r_anat.uniform(-8.0, 8.0, 2)
    centre_z = float(r_anat.uniform(-30.0, 30.0))
    top_margin = float(r_anat.uniform(-3.0, 2.0))
    hx, hy = head.half_extent_xy
    needed = 2.0 * max(hx + abs(offset_xy[0]), hy + abs(offset_xy[1])) + 8.0
    fov = float(overrides.get("fov_mm", draw_fov_mm(r_scan, scanner, needed)))
    if fov < needed:  # the head must fit in the field of view
        head = _scaled_head(head, (fov - 8.0) / (needed - 8.0))
    head = dataclasses.replace(head, centre=(float(offset_xy[0]), float(offset_xy[1]), centre_z))
    if mimic_set.present.get("atrophy"):
        head = atrophic(head, r_mimic)
    hours_after = 0.0
    if followup is not None:
        head, hours_after = followup.place(r_follow, head, fov)

    ps = pixel_spacing_mm(fov)
    dz = SLICE_THICKNESS_MM
    top = head.centre[2] + head.semi_sup * float(np.cos(np.deg2rad(head.pitch_deg))) + top_margin
    origin = (-(MATRIX - 1) * ps / 2.0, -(MATRIX - 1) * ps / 2.0, top - (n_slices - 1) * dz)
    grid = Grid((n_slices, MATRIX, MATRIX), (dz, ps, ps), origin)

    phantom = build_head(head, grid)
    paint_mimics(r_mimic, grid, head, phantom, mimic_set)
    if ich_free:
        labels = np.zeros(grid.shape, dtype=np.uint8)
        if ivh_only:
            paint_ivh(r_haem, grid, phantom, labels, 1.0 if r_haem.random() < 0.5 else -1.0)
        mask = np.zeros(grid.shape, dtype=np.uint8)
        markers = {k: 0 for k in markers} | {"ivh": int(ivh_only)}
        location, side, centre_lps = "none", "none", (float("nan"),) * 3
    elif followup is not None:
        haem = followup.render_haematoma(r_haem, grid, head, phantom, followup.target_volume_ml, markers,
                                         overrides.get("location"))
        mask, labels, location, side, centre_lps = haem.mask, haem.labels, haem.location, haem.side, haem.centre_lps
    else:
        haem = render_haematoma(r_haem, grid, head, phantom, target_ml, markers, overrides.get("location"))
        mask, labels, location, side, centre_lps = haem.mask, haem.labels, haem.location, haem.side, haem.centre_lps
    r_scan_noise = r_noise if followup is None else r_follow  # a new acquisition has its own noise
    low, high = overrides.get("noise_sd_range_hu", NOISE_SD_RANGE_HU)
    sd = float(overrides.get("noise_sd_hu", r_scan_noise.uniform(low, high)))
    hu = phantom.hu
    hu += ct_noise(r_scan_noise, grid.shape, sd)
    np.rint(hu, out=hu)
    hu_i16 = np.clip(hu, HU_MIN, HU_MAX).astype(np.int16)

    voxel_ml = dz * ps * ps / 1000.0
    if followup is None:
        baseline_ml = round(float(mask.sum()) * voxel_ml, 4)
        followup_ml = draw_followup_ml(r_growth, markers, baseline_ml, onset) if baseline_ml > 0 else None
    else:  # the baseline's volumes; this scan's own mask volume is SyntheticCase.mask_volume_ml
        baseline_ml = followup.baseline_volume_ml
        followup_ml = followup.target_volume_ml
    risk_true = expansion_probability(markers, baseline_ml, onset) if baseline_ml > 0 else None
    risk_image = image_risk(markers, baseline_ml) if baseline_ml > 0 else None
    return SyntheticCase(
        seed=seed,
        index=index,
        hu=hu_i16,
        mask=mask,
        structure_labels=labels,
        spacing_zyx=(dz, ps, ps),
        origin_xyz=origin,
        scanner=scanner,
        fov_mm=fov,
        markers=markers,
        location=location,
        side=side,
        baseline_volume_ml=baseline_ml,
        followup_volume_ml=followup_ml,
        target_volume_ml=target_ml,
        onset_to_ct_hours=round(onset, 2),
        admission_date=admission,
        acquisition_time=acq_time,
        brain_centroid_lps=phantom.brain_centroid,
        haematoma_centre_lps=centre_lps,
        head=head,
        mimics=tuple(mimic_set.names()),
        risk_true=None if risk_true is None else round(risk_true, 6),
        risk_image=None if risk_image is None else round(risk_image, 6),
        scan="baseline" if followup is None else "followup",
        hours_after_baseline=round(hours_after, 4),
        draw_args=(ich_free_fraction, ivh_only_fraction, dict(overrides)),
        noise_sd_hu=round(sd, 3),
    )

"""Named training presets: preprocessing plans overrides + model architecture + optimisation schedule.

``paper`` reproduces the protocol of Zhong et al. (2021) and its supplement: 32 x 256 x 256 matrix over a
160 x 112 x 112 mm (z, y, x) field of view, the supplement's widths, Adam with learning rate 1e-4 divided by 10 at
epochs 20 and 30, 40 epochs, batch size 1, ten-fold augmentation, mixed precision on GPU. The smaller presets keep
the same field of view (so the physical content of a case is unchanged) and shrink the matrix and the widths, so
that a 2-core CPU can train them; their plans differ and are therefore recorded with the weights.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.model.config import ModelConfig
from app.preprocessing.plans import Plans
from model_training.cohort.cache import DARK_PART_NAMES


class Schedule(BaseModel):
    """Optimisation schedule. ``milestones`` are 0-based epoch indices at whose start the lr is multiplied by ``gamma``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(40, ge=1)
    lr: float = Field(1e-4, gt=0)
    milestones: tuple[int, ...] = (20, 30)
    gamma: float = 0.1
    batch_size: int = Field(1, ge=1)
    aug_copies: int = Field(10, ge=1)  # passes over every training case per epoch, each independently augmented
    include_original: bool = True  # one of the aug_copies passes uses the un-augmented case
    seg_weight: float = 0.9  # loss = seg_weight * Dice loss + cls_weight * BCE(classification)
    cls_weight: float = 0.1
    # positive-class weight of the classification BCE: None = unweighted (the paper), "balanced" = the training
    # set's negatives / positives
    cls_pos_weight: float | Literal["balanced"] | None = None
    aux_weight: float = 0.0  # weight of the auxiliary BCE (the NCCT markers + intraventricular extension)
    # extra Dice-loss weight of the voxels of the clot's darker parts and of the intraventricular blood outside the
    # mask (cohorts with structure labels); 0 = the paper's unweighted Dice
    dark_weight: float = Field(0.0, ge=0)
    ivh_weight: float = Field(0.0, ge=0)
    # per-part overrides of dark_weight, keyed by STRUCTURE_LABELS name (e.g. {"fluid_hypo": 6.0})
    part_weights: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    weight_decay: float = 0.0
    amp: bool = True  # autocast on CUDA only (bf16 where supported, else fp16 + GradScaler); ignored on CPU
    channels_last_3d: bool = False
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # stratified validation split of the training cases

    @field_validator("part_weights")
    @classmethod
    def _known_parts(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(DARK_PART_NAMES))
        if unknown:
            raise ValueError(f"unknown darker part(s) {unknown}; known: {', '.join(DARK_PART_NAMES)}")
        return value

    @property
    def weighs_structures(self) -> bool:
        """True when the Dice loss uses voxel weights (some darker part or the intraventricular blood weighs)."""
        return bool(self.dark_weight or self.ivh_weight or any(self.part_weights.values()))


class Preset(BaseModel):
    """A named, frozen training configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    plans_overrides: dict[str, Any] = Field(default_factory=dict)
    model: ModelConfig = Field(default_factory=ModelConfig)
    schedule: Schedule = Field(default_factory=Schedule)

    def plans(self) -> Plans:
        """The preprocessing plans of this preset (the paper's defaults with the overrides applied)."""
        return Plans(**self.plans_overrides)


# The reduced grid and widths of the CPU-trained default weights (and of their fine-tuning preset).
CPU96_PLANS_OVERRIDES: dict[str, Any] = {"name": "zhong2021-cpu96", "matrix_zyx": (32, 96, 96)}
CPU96_MODEL = ModelConfig(encoder_widths=(8, 16, 32), bridge_width=64, decoder_widths=(32, 16), cls_width=64)

# The default weights from version 0.2.0: the CPU grid and widths, the classification features pooled over the
# predicted haematoma, and auxiliary NCCT-marker outputs.
CPU96_REGION_MODEL = CPU96_MODEL.model_copy(update={"cls_pooling": "haematoma", "aux_outputs": 8, "dropout": 0.1})

# one epoch of the structure-weighted loss (darker parts and the intraventricular blood outside the mask 3x),
# every pass randomly augmented; the fine-tuning presets differ by their learning rate
STRUCTURE_FINETUNE: dict[str, Any] = dict(epochs=1, milestones=(), aug_copies=1, include_original=False, seg_weight=1.0,
                                cls_weight=0.5, cls_pos_weight="balanced", aux_weight=0.5, dark_weight=2.0,
                                ivh_weight=2.0, val_fraction=0.1)

PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        description="Zhong et al. 2021: 32x256x256, supplement widths, Adam 1e-4 (/10 at 20, 30), 40 epochs, "
        "batch 1, tenfold augmentation, AMP on GPU.",
        schedule=Schedule(val_fraction=0.0),
    ),
    "cpu-default": Preset(
        name="cpu-default",
        description="Default weights trained on a 2-core CPU: 32x96x96 over the paper's 160x112x112 mm field of "
        "view (1.17 mm in-plane, 5 mm slices), halved widths, 3 epochs with every pass randomly augmented "
        "(rotation/scale/translation as the paper), Adam lr 1e-3 divided by 10 for the last epoch.",
        plans_overrides=CPU96_PLANS_OVERRIDES,
        model=CPU96_MODEL,
        schedule=Schedule(epochs=3, lr=1e-3, milestones=(2,), aug_copies=1, include_original=False,
                          val_fraction=0.1),
    ),
    "cpu-default-finetune": Preset(
        name="cpu-default-finetune",
        description="Continues cpu-default from its weights (--init-weights): 2 more epochs, every pass randomly "
        "augmented, Adam lr 3e-4 then 3e-5.",
        plans_overrides=CPU96_PLANS_OVERRIDES,
        model=CPU96_MODEL,
        schedule=Schedule(epochs=2, lr=3e-4, milestones=(1,), aug_copies=1, include_original=False,
                          val_fraction=0.1),
    ),
    "cpu-region-pooling": Preset(
        name="cpu-region-pooling",
        description="CPU grid 32x96x96 and halved widths as cpu-default; the classification convolutions pooled "
        "over the predicted haematoma (weighted mean and max beside the global mean, plus the log predicted "
        "volume) with auxiliary outputs for the seven NCCT markers and intraventricular extension; loss "
        "1.0 x Dice + 0.5 x class-balanced BCE (expansion) + 0.5 x BCE (markers), heads without haemorrhage in "
        "the cohort (no expansion label: segmentation loss only); started from the cpu-default weights "
        "(--init-weights), 6 epochs, every pass randomly augmented, Adam lr 3e-4 divided by 10 for the last two.",
        plans_overrides=CPU96_PLANS_OVERRIDES,
        model=CPU96_REGION_MODEL,
        schedule=Schedule(epochs=6, lr=3e-4, milestones=(4,), aug_copies=1, include_original=False,
                          seg_weight=1.0, cls_weight=0.5, cls_pos_weight="balanced", aux_weight=0.5,
                          val_fraction=0.1),
    ),
    "cpu-structure-finetune": Preset(
        name="cpu-structure-finetune",
        description="Continues cpu-region-pooling (--init-weights) on a cohort with structure labels: the Dice "
        "loss weighs the clot's darker parts (hypodense focus, swirl, the darker side of a blend, the serum of a "
        "fluid level, heterogeneous foci) and the intraventricular blood outside the mask 3x (voxel weight 1 + 2), "
        "which the unweighted loss let the network leave out of, or take into, the mask; other losses as "
        "cpu-region-pooling; one epoch, every pass randomly augmented, Adam lr 1e-4 (a second epoch at that rate "
        "read the validation clots smaller than the first, and a third at 1e-5 did not recover it).",
        plans_overrides=CPU96_PLANS_OVERRIDES,
        model=CPU96_REGION_MODEL,
        schedule=Schedule(lr=1e-4, **STRUCTURE_FINETUNE),
    ),
    "cpu-dark-parts-finetune": Preset(
        name="cpu-dark-parts-finetune",
        description="Continues cpu-structure-finetune (--init-weights) at a lower rate with the darker parts that the "
        "network still left out weighed by how much they were missed: the serum of a fluid level 7x (voxel weight "
        "1 + 6), the darker side of a blend and the swirl 5x, the other darker parts and the intraventricular blood "
        "3x as before; two epochs at Adam lr 3e-5 with a checkpoint each, to be chosen on the validation split.",
        plans_overrides=CPU96_PLANS_OVERRIDES,
        model=CPU96_REGION_MODEL,
        schedule=Schedule(epochs=2, lr=3e-5, milestones=(), aug_copies=1, include_original=False,
                          seg_weight=1.0, cls_weight=0.5, cls_pos_weight="balanced", aux_weight=0.5,
                          dark_weight=2.0, ivh_weight=2.0,
                          part_weights={"fluid_hypo": 6.0, "blend_hypo": 4.0, "swirl": 4.0}, val_fraction=0.1),
    ),
    "cpu-unclipped-finetune": Preset(
        name="cpu-unclipped-finetune",
        description="cpu-dark-parts-finetune's loss on the z-scored input with its negatives kept (plans "
        "normalisation brain_zscore instead of the paper's brain_zscore_clip_negative): the paper's clipping gives "
        "every voxel less dense than the brain's mean the same 0, so a fluid level's serum (12-24 HU) and much of a "
        "swirl (30-40 HU) look like white matter and CSF to the network; one epoch at Adam lr 1e-4 from the "
        "clipped-input network (--init-weights).",
        plans_overrides={**CPU96_PLANS_OVERRIDES, "name": "zhong2021-cpu96-unclipped", "normalisation": "brain_zscore"},
        model=CPU96_REGION_MODEL,
        schedule=Schedule(epochs=1, lr=1e-4, milestones=(), aug_copies=1, include_original=False,
                          seg_weight=1.0, cls_weight=0.5, cls_pos_weight="balanced", aux_weight=0.5,
                          dark_weight=2.0, ivh_weight=2.0,
                          part_weights={"fluid_hypo": 6.0, "blend_hypo": 4.0, "swirl": 4.0}, val_fraction=0.1),
    ),
    "cpu-real-anatomy-finetune": Preset(
        name="cpu-real-anatomy-finetune",
        description="Continues cpu-structure-finetune (--init-weights) on a cohort that mixes phantoms with "
        "haematomas inserted into real heads without haemorrhage (python -m model_training insert): real anatomy, "
        "partial-volume bone and noise texture around clots whose truth is known; cpu-structure-finetune's loss, one "
        "epoch at Adam lr 5e-5 (half the first fine-tuning's rate: the network is adapted, not retrained).",
        plans_overrides=CPU96_PLANS_OVERRIDES,
        model=CPU96_REGION_MODEL,
        schedule=Schedule(lr=5e-5, **STRUCTURE_FINETUNE),
    ),
    "smoke": Preset(
        name="smoke",
        description="Smoke test: 16x48x48 matrix, tiny widths, 2 epochs, no augmentation copies beyond one.",
        plans_overrides={"name": "zhong2021-smoke48", "matrix_zyx": (16, 48, 48), "interpolation": "linear"},
        model=ModelConfig(encoder_widths=(4, 8, 16), bridge_width=32, decoder_widths=(16, 8), cls_width=16),
        schedule=Schedule(epochs=2, lr=1e-3, milestones=(1,), aug_copies=1, include_original=False,
                          val_fraction=0.0),
    ),
}


def get_preset(name: str) -> Preset:
    """Look a preset up by name; raises ``KeyError`` listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None

"""Architecture settings of the dual-output 3D U-Net (saved with the weights in ``manifest.json``)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict


class ModelConfig(BaseModel):
    """Defaults follow the supplement's layer description (Supplemental Figure 1).

    Encoder 16@D×H×W -> 32@D/2 -> 64@D/4 (down-sampling by 3×3×3 stride-2 convolutions), bridge 128,
    decoder 64@D/2 -> 32@D (2×2×2 transposed convolutions, skip connections), 1×1×1 convolution for the mask;
    classification head on the bridge: ``cls_convs`` 3×3×3 convolutions with ``cls_width`` filters, global
    average pooling, one unit. The supplement's down-sampling is 2×2×2 from 32×256×256 to 16×128×128 and from
    16×128×128 to 8×64×64, so both encoder steps halve every axis.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "zhong2021-dual-unet3d"
    in_channels: int = 1
    encoder_widths: tuple[int, ...] = (16, 32, 64)
    bridge_width: int = 128
    decoder_widths: tuple[int, ...] = (64, 32)
    convs_per_level: int = 2
    bridge_convs: int = 1  # "1 convolution operation for bridging layer"
    norm: Literal["instance", "batch", "none"] = "instance"
    cls_convs: int = 2
    cls_width: int = 128
    dropout: float = 0.0
    # "global": the supplement's global average pooling of the classification convolutions over the whole bridge.
    # "haematoma": the same features pooled over the predicted haematoma (the segmentation probability, detached,
    # averaged down to the bridge grid: weighted mean and weighted max) beside the global mean, plus the
    # log predicted volume; the clot is a few per cent of the field of view that global pooling averages over.
    cls_pooling: Literal["global", "haematoma"] = "global"
    aux_outputs: int = 0  # auxiliary logits from the pooled classification features (e.g. the NCCT markers)

    def canonical_json(self) -> str:
        """Sorted JSON of the settings; options added after the first weights are left out at their defaults,
        so the fingerprints of weights trained before they existed stay valid."""
        data = self.model_dump(mode="json")
        for key, default in _LATER_OPTION_DEFAULTS.items():
            if data.get(key) == default:
                data.pop(key)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


_LATER_OPTION_DEFAULTS = {"cls_pooling": "global", "aux_outputs": 0}

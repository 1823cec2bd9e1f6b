"""The NCCT markers of Zhong et al. (2021), Supplemental Table 2, as manifest column names: the one list that the
manifest reader, the synthetic generator and the Table-2 report share."""

from __future__ import annotations

from app.model.ncct_markers import NCCT_MARKERS  # the one list, defined in the core

# the markers plus intraventricular extension (a 0/1 flag of the manifest, not a Table-2 row)
MARKER_FLAGS: tuple[str, ...] = (*NCCT_MARKERS, "ivh")

"""Options shared by the training sub-commands."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
from pathlib import Path

from model_training.cohort.cache_dir import default_cache_dir
from model_training.cohort.manifest import PAPER_CUTOFF

DEFAULT_CACHE = Path(os.environ["ICH_CACHE_DIR"]) if "ICH_CACHE_DIR" in os.environ else default_cache_dir()


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help="preprocessed-tensor cache (default: $ICH_CACHE_DIR, else "
                   "$XDG_CACHE_HOME/ich-expansion/preprocessed or ~/.cache/ich-expansion/preprocessed)")
    p.add_argument("--preprocess-workers", type=int, default=None, help="processes for the first preprocessing pass")
    p.add_argument("--inclusive-label", action="store_true",
                   help="derive missing labels with >= (supplement) instead of > (main text)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun sets the local GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_split_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cutoff", type=dt.date.fromisoformat, default=PAPER_CUTOFF,
                   help="temporal split: admissions before this date train, on/after it test (default 2018-09-01)")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

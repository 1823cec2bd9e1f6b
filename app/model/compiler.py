"""Whether the inference runner wraps the model in ``torch.compile`` (inductor with freezing).

Inductor's CPU backend generates C++ and needs a compiler; :func:`cxx_compiler_available` looks for one the way
inductor does (``$CXX``, ``g++``, ``c++``, ``clang++`` on ``PATH``), so that ``compile="auto"`` never starts a
compilation that is bound to fail. The speed-up and the compile times are measured in bench/README.md.
"""

from __future__ import annotations

import os
import shutil
from typing import Literal

import torch

CompileMode = bool | Literal["auto", "on", "off"]


def cxx_compiler_available() -> bool:
    """Whether inductor's CPU backend can find a C++ compiler (``$CXX``, ``g++``, ``c++`` or ``clang++``)."""
    candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return any(c and shutil.which(c) for c in candidates)


def resolve_compile(device: torch.device, mode: CompileMode) -> bool:
    """Whether to wrap the model in ``torch.compile``: ``"auto"`` = on a CPU device with a C++ compiler (faster
    there, bench/README.md); off on CUDA, where CUDA graphs remove the launch overhead and inductor has not been
    measured by this project. ``True``/``"on"`` and ``False``/``"off"`` force it."""
    if mode is True or mode == "on":
        return True
    if mode is False or mode == "off":
        return False
    if mode != "auto":
        raise ValueError(f"unknown compile mode {mode!r}")
    return device.type == "cpu" and cxx_compiler_available()

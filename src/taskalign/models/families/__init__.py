"""Encoder families behind one protocol (taskalign.models.families.base).

Each family module defines its encoder (a `FoundationEncoder` subclass), its geometry dataclass, the checkpoint
layouts it imports (each a converter to the family's own keys) and a key-pattern recogniser, and registers them
as one `Family` here. Everything else looks a family up by the name stored in an encoder file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from taskalign.models.families.base import FoundationEncoder, LoadReport

# (checkpoint state, geometry, layout options) -> (state in the family's own keys, report with mapping/ignored/notes)
LayoutConverter = Callable[[dict[str, torch.Tensor], object, dict], tuple[dict[str, torch.Tensor], LoadReport]]


@dataclass(frozen=True)
class Family:
    name: str
    encoder_cls: type[FoundationEncoder]
    layouts: dict[str, LayoutConverter]
    # True when a checkpoint's (unwrapped) keys look like this family's, in any of its layouts: names the
    # architecture a refused import actually holds
    recognises: Callable[[dict[str, torch.Tensor]], bool]
    description: str = ""
    layout_notes: dict[str, str] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"encoder family {family.name!r} registered twice")
    FAMILIES[family.name] = family
    return family


def family(name: str) -> Family:
    _load_all()
    if name not in FAMILIES:
        raise ValueError(f"unknown encoder family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def all_families() -> dict[str, Family]:
    _load_all()
    return dict(FAMILIES)


def _load_all() -> None:
    """Import every family module once (each registers itself); the names are the torch-free table's."""
    import importlib

    from taskalign.models.family_names import FAMILY_LAYOUTS

    for module in FAMILY_LAYOUTS:
        importlib.import_module(f"taskalign.models.families.{module}")

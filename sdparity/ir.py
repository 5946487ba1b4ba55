"""What flows from a stage to a backend (StageIR) and the one content digest used in keys.

Kept apart from the stage registry so backends and the build cache need not import stages."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np


@dataclass
class StageIR:
    """What a stage hands a backend: a Relax module and the weights of each function."""

    mod: object  # tvm.IRModule
    params: dict[str, list[np.ndarray]] = field(default_factory=dict)  # function -> weights


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]

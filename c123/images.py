"""Image helpers every layer may use (preprocessing, the priors): no c123 imports, so no import circle."""

from __future__ import annotations

import numpy as np


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 RGB composited over white by alpha."""
    a = alpha[..., None].astype(np.float32) / 255
    return np.rint(rgb.astype(np.float32) * a + 255 * (1 - a)).astype(np.uint8)

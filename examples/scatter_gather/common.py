"""What the scripts of the scatter-gather example share: stream names, images, the analysis.

Image ``k`` is derived from ``(seed, k)`` alone, so anyone can compute the
expected result of a run without a log (the test does).
"""

from __future__ import annotations

import numpy as np

FRAMES = "sg/frames"
RESULTS = "sg/results"
WORKER_GROUP = "spots"
AGGREGATOR_GROUP = "aggregate"


def image(seed: int, k: int, shape: tuple[int, int], lam: float) -> np.ndarray:
    """Image ``k``: Poisson noise with mean ``lam``, as a detector's dark frame would be."""
    return np.random.default_rng([seed, k]).poisson(lam, shape).astype(np.uint16)


def threshold(lam: float) -> int:
    """Pixels above this are 'spots': about 0.3 % of the pixels of pure noise."""
    return int(lam + 3 * lam**0.5)


def count_spots(data: np.ndarray, above: int) -> int:
    """The toy per-image analysis: how many pixels are above the threshold."""
    return int(np.count_nonzero(data > above))


def parse_shape(text: str) -> tuple[int, int]:
    rows, cols = (int(n) for n in text.lower().split("x"))
    return rows, cols

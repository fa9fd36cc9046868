"""The progress bar of the parallel dataset writers (`cvm data polar`, the synthetic world's writer).

Only the bar is shared: the polar writer runs spawned worker processes (imap_unordered over picklable
tasks) and the synthetic writer threads (one shared world, closures), so each keeps its own pool.
"""

from __future__ import annotations

from tqdm import tqdm


def progress_bar(total: int, desc: str, unit: str, enabled: bool) -> tqdm:
    """A tqdm bar of `total` units; with `enabled` False it accepts update()/close() and prints nothing."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled)

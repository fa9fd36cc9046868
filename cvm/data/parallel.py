"""The progress bar of the parallel dataset writers (`cvm data polar`, the synthetic world's writer).

Only the bar is shared: the polar writer runs spawned worker processes (imap_unordered over picklable
tasks) and the synthetic writer threads (one shared world, closures), so each keeps its own pool.
"""

from __future__ import annotations


class _SilentBar:
    """The part of tqdm's interface the writers use, doing nothing (progress disabled)."""

    def update(self, n=1):
        pass

    def close(self):
        pass


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    """A tqdm bar of `total` units, or a no-op stand-in when disabled (tqdm is then not imported)."""
    if enabled:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit)
    return _SilentBar()

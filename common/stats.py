"""Steady-state figures from repeated timings, as trtexec reports them: median, spread, percentiles, noise.

A figure measured once says nothing about how much it moves. The course times several windows in one
process and ranks by their median; the spread ((max - min) / median) says how steady the run was, and
two figures whose ranges (min..max of their windows) overlap cannot be told apart: their difference is
"within noise", neither a gain nor a loss.
"""
import statistics

import numpy as np

SPREAD_WARNING_PCT = 10.0  # above this, the run was not steady (trtexec warns likewise on GPU compute time)


def median(values):
    return statistics.median(values)


def spread_pct(values):
    """(max - min) / median, in percent: 0 for a single value."""
    return (max(values) - min(values)) / median(values) * 100


def percentile(values, q):
    """The q-th percentile (0..100), linear between the closest ranks, as numpy computes it."""
    return float(np.percentile(values, q))


def is_noisy(values):
    return spread_pct(values) > SPREAD_WARNING_PCT


def within_noise(values, other_values):
    """True when the two ranges (min..max) overlap: some value lies in both, so neither is surely faster."""
    return max(min(values), min(other_values)) <= min(max(values), max(other_values))


def spread_warning(what, values):
    """trtexec-style warning text when the spread is large, else None."""
    if not is_noisy(values):
        return None
    return (f"warning: the spread of {what} is {spread_pct(values):.1f}% (above {SPREAD_WARNING_PCT:g}%): the run "
            "was not steady (other work on the GPU or the host, clocks, a stall); compare figures within one session "
            "and rerun")

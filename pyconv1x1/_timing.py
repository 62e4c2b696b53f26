"""Timing engines against each other on a noisy host, for `pyconv1x1 bench` and
tools/bench.py: engines run interleaved in rounds, one block of calls per engine per
round, each block started once the previous engine's threads have gone idle; an engine
is compared with another by the median over rounds of the ratio of their two blocks of
the same round (blocks milliseconds apart), so drift of the machine between rounds
cancels out of each ratio. Only light standard modules: numpy is not needed to time, and
the command line imports this module only to time."""
import collections
import time

__all__ = ["timed", "settle", "Rounds", "Ratio", "median", "paired_ratio",
           "percentiles_ms"]


def timed(fn, count, into):
    """Call fn count times, appending each call's seconds to into."""
    clock = time.perf_counter
    for _ in range(count):
        start = clock()
        fn()
        into.append(clock() - start)


def settle(max_s=0.2, window_s=0.005):
    """Wait (up to max_s) until no thread of this process burns CPU while it sleeps:
    threads an engine left spinning (OpenBLAS ~0.1 s, onnxruntime and OpenMP a few ms)
    must not steal cycles from the next engine's timed block."""
    end = time.perf_counter() + max_s
    while time.perf_counter() < end:
        c0 = time.process_time()
        time.sleep(window_s)
        if time.process_time() - c0 < 0.1 * window_s:
            return


# numerator time / denominator time over paired rounds: the median and the quartiles of
# the per-round ratios, and how many rounds paired
Ratio = collections.namedtuple("Ratio", "median q1 q3 rounds")


def median(values):
    """The median of a non-empty sequence (the mean of the middle two for an even
    count)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def paired_ratio(numerator_blocks, denominator_blocks):
    """The Ratio of two engines' per-round block times (None where a round has no
    block of one of them); None when no round pairs."""
    pairs = sorted(a / b for a, b in zip(numerator_blocks, denominator_blocks)
                   if a is not None and b is not None and b > 0)
    if not pairs:
        return None
    return Ratio(median=median(pairs), q1=pairs[len(pairs) // 4],
                 q3=pairs[min(len(pairs) - 1, (3 * len(pairs)) // 4)], rounds=len(pairs))


def percentiles_ms(times, qs=(10, 50, 90, 99)):
    """{"p10_ms": ..., ...} of times in seconds (linear interpolation, as numpy's)."""
    ordered = sorted(times)
    out = {}
    for q in qs:
        pos = (len(ordered) - 1) * q / 100
        low = int(pos)
        high = min(low + 1, len(ordered) - 1)
        value = ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
        out[f"p{q}_ms"] = value * 1e3
    return out


class Rounds:
    """Interleaved rounds over named engines (zero-argument callables).

    round(counts) times one block of counts[name] calls of each engine (an engine with
    no count, or 0, sits the round out), settling first when settle_s is set; with
    rotate, the order turns by one engine each round so no engine always follows the
    same one. After the rounds: .times[name] every call's seconds, .blocks[name] per
    round the block's median (None where it sat out), .failed[name] the exception of an
    engine that raised (it sits out every later round), when keep_going; else it
    propagates."""

    def __init__(self, engines, settle_s=None, rotate=False, keep_going=False):
        self.engines = dict(engines)
        self.settle_s, self.rotate, self.keep_going = settle_s, rotate, keep_going
        self.times = {name: [] for name in self.engines}
        self.blocks = {name: [] for name in self.engines}
        self.failed = {}
        self.count = 0

    def round(self, counts):
        names = list(self.engines)
        if self.rotate and names:
            k = self.count % len(names)
            names = names[k:] + names[:k]
        medians = {}
        for name in names:
            count = counts.get(name, 0)
            if name in self.failed or count <= 0:
                continue
            if self.settle_s:
                settle(self.settle_s)
            block = []
            try:
                timed(self.engines[name], count, block)
            except Exception as exc:
                if not self.keep_going:
                    raise
                self.failed[name] = exc
                continue
            self.times[name].extend(block)
            medians[name] = median(block)
        for name in self.engines:
            self.blocks[name].append(medians.get(name))
        self.count += 1

    def ratio(self, numerator, denominator):
        """paired_ratio(numerator's blocks, denominator's blocks)."""
        return paired_ratio(self.blocks[numerator], self.blocks[denominator])

"""What this machine has: physical memory and CPU cores, for refusing sizes that cannot fit.

Plain functions of the standard library only (no hydra/omegaconf), so the math modules can use
them: a constructor compares its estimate of the bytes it would allocate with ``physical_memory``
and raises a one-line ValueError naming its key before allocating.
"""

from __future__ import annotations

import os

GIB = 2**30
# torch.manual_seed / Generator.manual_seed accept exactly these integers (torch 2.13, measured:
# −2⁶³ − 1 and 2⁶⁴ raise "Overflow when unpacking long long"; the seed is kept as a uint64).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
# torch.set_num_threads beyond a few threads per core only adds contention; at ~10⁵ it segfaults.
THREADS_PER_CORE = 4


def physical_memory() -> int:
    """Bytes of physical memory (SC_PHYS_PAGES × SC_PAGE_SIZE); 2⁶⁴ where unknown."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no limit known
        return 2**64


def cpu_count() -> int:
    """Logical CPU cores (os.cpu_count(), 1 where unknown)."""
    return os.cpu_count() or 1


def max_threads() -> int:
    """The most intra-op threads a run may ask for: THREADS_PER_CORE × the cores."""
    return THREADS_PER_CORE * cpu_count()


def gib(n_bytes: float) -> str:
    """A byte count as GiB for messages, e.g. '23.5 GiB'."""
    return f"{n_bytes / GIB:.3g} GiB"


def largest_count(bytes_each: float, memory: int | None = None) -> int:
    """The largest count n with n × bytes_each ≤ memory (default: physical_memory())."""
    memory = physical_memory() if memory is None else memory
    return int(memory // max(bytes_each, 1.0))


def size_refusal(key: str, value: int, need: float, what: str, largest: int) -> str | None:
    """A one-line refusal when ``need`` bytes exceed physical memory, else None.

    key=value: the config entry; what: how the estimate was made; largest: the largest value
    of ``key`` that fits. The estimate is a lower bound of what the run allocates for that key.
    """
    memory = physical_memory()
    if need <= memory:
        return None
    return (f"{key}={value} needs at least {gib(need)} ({what}), more than the {gib(memory)} "
            f"of memory here; allowed: at most {largest}")


def size_problem(key: str, count: int, bytes_each: float, what: str) -> str | None:
    """size_refusal for a size linear in ``count``: count × bytes_each bytes."""
    return size_refusal(key, count, count * bytes_each, what, largest_count(bytes_each))

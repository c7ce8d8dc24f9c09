"""How much freed memory the C library keeps: glibc's mmap threshold (CPU runs of real models).

glibc's malloc gives each block of at least M_MMAP_THRESHOLD bytes its own mapping, which goes back to
the operating system when the block is freed; smaller blocks come from the heap, and freed heap blocks
stay resident for reuse. The threshold starts at 128 KiB but is dynamic: each time a mapped block is
freed, glibc raises it to that block's size (up to 32 MiB on 64-bit machines). A forward and backward
pass of a real model frees many blocks of one to tens of MiB, so after the first pass most activation
blocks come from the heap and the process's resident memory holds the freed ones as well as the live
ones. Fixing the threshold (any explicit setting stops the adjustment) keeps large blocks mapped: the
resident memory follows the live tensors, and each large allocation costs fresh page faults (slower).
Environment equivalent, set before Python starts: MALLOC_MMAP_THRESHOLD_=<bytes>.
"""

from __future__ import annotations

import ctypes
import warnings

M_MMAP_THRESHOLD = -3          # mallopt's parameter number (glibc malloc.h)
MAX_MMAP_THRESHOLD_KIB = 32 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit machines (4 MiB x sizeof(long))


def glibc_mallopt():
    """The C library's `mallopt` when it is glibc's, else None (macOS, Windows, musl)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it
        return libc.mallopt
    except (OSError, AttributeError, TypeError):
        return None


def fix_mmap_threshold(kib: int) -> bool:
    """Fix glibc's mmap threshold at `kib` KiB for the rest of the process (1 <= kib <= 32768): blocks of
    at least that size get their own mapping and are returned to the system when freed. True when glibc
    accepted it; False where the C library is not glibc or refused the value (nothing changes)."""
    if not 1 <= kib <= MAX_MMAP_THRESHOLD_KIB:
        raise ValueError(f"mmap threshold must be 1 to {MAX_MMAP_THRESHOLD_KIB} KiB, got {kib}")
    mallopt = glibc_mallopt()
    return mallopt is not None and mallopt(M_MMAP_THRESHOLD, kib * 1024) == 1


def apply_mmap_threshold(kib: int | None) -> None:
    """A config's `mmap_threshold_kib`: nothing for None, else `fix_mmap_threshold`, with a warning where
    the C library is not glibc (the setting has no effect there)."""
    if kib is not None and not fix_mmap_threshold(kib):
        warnings.warn(f"mmap_threshold_kib {kib} has no effect: the C library is not glibc", stacklevel=2)

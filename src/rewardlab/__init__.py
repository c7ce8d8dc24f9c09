"""rewardlab: find out what post-training taught a language model about reward."""

import os

# MKL, torch's CPU BLAS, splits long matrix products across threads and picks the thread count per
# call (MKL_DYNAMIC), so one product can be summed in another order depending on the process's state
# and the machine's load: same seed, other numbers. Conditional numerical reproducibility in strict
# mode makes its results independent of the thread count. It must be set before torch loads; a value
# the user set is kept, and it has no effect when torch was imported before rewardlab.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"

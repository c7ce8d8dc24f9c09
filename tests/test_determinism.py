"""CPU numbers do not depend on how many threads the BLAS uses (see rewardlab/__init__.py)."""

import os
import subprocess
import sys

SCRIPT = """
import rewardlab, torch
g = torch.Generator().manual_seed(0)
a, b = torch.randn(128, 8192, generator=g), torch.randn(8192, 128, generator=g)
outs = []
for threads in (1, 2):
    torch.set_num_threads(threads)
    outs.append(a @ b)
print(torch.equal(*outs))
"""


def test_matrix_product_is_the_same_with_one_and_two_threads():
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_a_users_mkl_setting_is_kept():
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE"}
    code = "import os, rewardlab; print(os.environ['MKL_CBWR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "COMPATIBLE"

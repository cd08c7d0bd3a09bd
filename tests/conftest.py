"""Suite-wide settings.

Tests run tiny models, for which one intra-op thread is fastest; more threads only contend with the
servers and subprocesses tests start on the same two cores (measured: up to 19x slower).
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses (CLI, torchrun, servers)

import torch  # noqa: E402

torch.set_num_threads(1)

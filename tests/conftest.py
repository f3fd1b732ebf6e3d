"""Shared test set-up: make tests/helpers importable; keep torch to one thread per worker."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

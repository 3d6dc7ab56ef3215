"Shared pytest set-up: the repository root and its nbdev config."
import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('MPLBACKEND', 'Agg')          # notebooks draw figures; never open a window
os.environ.setdefault('TQDM_DISABLE', '1')          # keep the CI log readable
os.environ.setdefault('HF_HUB_OFFLINE', '1')        # tests never reach a model hub
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

@pytest.fixture(scope='session')
def root(): return ROOT

"Shared pytest set-up: the repository root and its nbdev config."
import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('MPLBACKEND', 'Agg')          # notebooks draw figures; never open a window
os.environ.setdefault('TQDM_DISABLE', '1')          # keep the CI log readable
os.environ.setdefault('HF_HUB_OFFLINE', '1')        # tests never reach a model hub
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
if os.environ.get('PYTEST_XDIST_WORKER'):            # notebooks run side by side (pytest -n): one thread each, or they fight over the cores
    for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.setdefault(var, '1')

@pytest.fixture(scope='session')
def root(): return ROOT

def pytest_sessionfinish(session, exitstatus):
    session.config._diffda_exitstatus = int(exitstatus)

def pytest_unconfigure(config):
    "After the summary is printed, leave at once: tearing down ~40 notebooks' objects (pipelines, tensors) took over a minute of CI time."
    if hasattr(config, '_diffda_exitstatus') and not os.environ.get('DIFFDA_SLOW_EXIT'):
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(config._diffda_exitstatus)

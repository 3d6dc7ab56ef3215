"""Run every notebook in `nbs/` as a test, one pytest test per notebook.

Cells flagged with a `tst_flags` flag from settings.ini (`notest slow gpu download`) are skipped,
exactly as `nbdev_test` does. Set `DIFFDA_TEST_FLAGS="gpu slow"` to run those cells too.
"""
import os
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as _run_notebook  # renamed: pytest would collect `test_nb` itself

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'

def _notebooks():
    "Every notebook nbdev would test: not under a `_`/`.` name, not in a folder holding `.notest`."
    out = []
    for p in sorted(NBS.rglob('*.ipynb')):
        rel = p.relative_to(NBS)
        if any(part.startswith(('_', '.')) for part in rel.parts): continue
        if any((NBS / Path(*rel.parts[:i]) / '.notest').exists() for i in range(len(rel.parts))): continue
        out.append(p)
    return out

@pytest.mark.parametrize('nb', _notebooks(), ids=lambda p: str(p.relative_to(NBS)))
def test_notebook(nb):
    cfg = get_config(path=ROOT)
    force = os.environ.get('DIFFDA_TEST_FLAGS', '').split()
    skip = [f for f in cfg.tst_flags.split() if f not in force]
    ok, secs = _run_notebook(nb, skip_flags=skip, force_flags=force, basepath=cfg.config_path)
    assert ok, f'{nb.name} failed (see the traceback above)'

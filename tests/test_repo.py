"""Repository checks that CI relies on: notebooks clean, library in sync, README current, docs render.

Each check works on a scratch copy of the files git would ship, so running the tests never edits
your working tree.
"""
import json, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def _site_notebooks():
    "Every notebook of the site: under nbs/ (tutorials included), not under a `_`/`.` name."
    nbs = ROOT/'nbs'
    return sorted(p for p in nbs.rglob('*.ipynb') if not any(x.startswith(('_', '.')) for x in p.relative_to(nbs).parts))

def _shipped_files():
    "Tracked files plus untracked, not-ignored ones (what a commit of the working tree would hold)."
    out = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split('\0') if f and (ROOT/f).exists()]

@pytest.fixture(scope='module')
def scratch(tmp_path_factory):
    "A copy of the repository's shipped files (symlinks kept as links)."
    dst = tmp_path_factory.mktemp('repo')
    for f in _shipped_files():
        src, tgt = ROOT/f, dst/f
        tgt.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink(): os.symlink(os.readlink(src), tgt)
        else: shutil.copy2(src, tgt)
    return dst

def _changed(scratch, files):
    return [f for f in files if (scratch/f).exists() and not (ROOT/f).is_symlink()
            and (scratch/f).read_bytes() != (ROOT/f).read_bytes()]

def _run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f'{cmd} failed:\n{r.stdout}\n{r.stderr}'

def test_notebooks_are_clean(scratch):
    "`nbdev_clean` changes nothing: notebooks are committed clean, with cell ids."
    _run(['nbdev_clean'], scratch)
    nbs = [f for f in _shipped_files() if f.endswith('.ipynb')]
    assert nbs, 'no notebooks found'
    assert not _changed(scratch, nbs), f'not clean (run nbdev_clean): {_changed(scratch, nbs)}'

def test_library_in_sync(scratch):
    "`nbdev_export` changes nothing: the generated modules, `_modidx.py` and pyproject.toml match the notebooks."
    _run(['nbdev_export'], scratch)
    shipped = set(_shipped_files())
    lib = [str(p.relative_to(scratch)) for p in (scratch/'diffda_nb').rglob('*.py')] + ['pyproject.toml']
    new = [f for f in lib if f not in shipped]
    assert not new, f'nbdev_export creates files not in the repo (export and commit them): {new}'
    assert not _changed(scratch, lib), f'out of sync with the notebooks (run nbdev_export): {_changed(scratch, lib)}'

def test_readme_is_current():
    "README.md is exactly what tools/make_readme.py renders from nbs/index.ipynb."
    r = subprocess.run([sys.executable, 'tools/make_readme.py', '--check'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

def _readme_commands():
    "The shell commands in the README's fenced `bash` blocks."
    txt = (ROOT/'README.md').read_text()
    return [l.strip() for b in re.findall(r'```(?:bash|sh)\n(.*?)```', txt, re.S) for l in b.splitlines() if l.strip()]

def test_ci_runs_the_readme_test_command():
    "The README has exactly two set-up commands, and `.ci/run` runs the second one verbatim."
    cmds = _readme_commands()
    assert len(cmds) == 2, f'expected 2 set-up commands in README.md, found {cmds}'
    ci = (ROOT/'.ci'/'run').read_text().splitlines()
    assert cmds[1] in [l.strip() for l in ci], f'.ci/run does not run the README test command {cmds[1]!r}'

# a word in angle brackets that is not an HTML tag a page may use: a browser swallows it (`<class_3>`, `<name>`)
_HTML_WORD = re.compile(r'<(?!/?(?:a|img|br|span|div|p|code|sub|sup|b|i|em|strong|details|summary|table|tr|td|th|kbd)\b)[A-Za-z_][\w-]*>')

def test_docs_render(scratch):
    "Docs smoke test: nbdev processes every notebook (runs show_doc cells) and nbconvert renders each to HTML."
    from nbdev.serve import proc_nbs
    from nbdev.config import get_config
    from nbconvert import HTMLExporter
    import nbformat
    cwd = os.getcwd()
    try:
        os.chdir(scratch)
        get_config.cache_clear()  # the notebook tests cached the repository's config; process the scratch copy
        cache = proc_nbs(path=scratch/'nbs', n_workers=0, force=True)
    finally:
        os.chdir(cwd); get_config.cache_clear()
    assert Path(cache).resolve() == (scratch/'_proc').resolve(), cache
    procd = sorted(Path(cache).rglob('*.ipynb'))
    src = [p for p in (scratch/'nbs').rglob('*.ipynb') if not any(x.startswith(('_', '.')) for x in p.relative_to(scratch/'nbs').parts)]
    assert len(procd) == len(src), f'processed {len(procd)} of {len(src)} notebooks'
    for p in procd:
        nb = nbformat.read(p, as_version=4)
        for c in nb.cells: c.get('metadata', {}).pop('execution', None)
        html, _ = HTMLExporter().from_notebook_node(nb)
        assert '<html' in html and len(html) > 1000, p.name
        assert 'Traceback (most recent call last)' not in html, f'{p.name}: a doc cell raised'
        for c in nb.cells:   # prose: a word in angle brackets outside code is swallowed as an HTML tag
            if c.cell_type == 'markdown':
                prose = re.sub(r'```.*?```|`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]*\$', '', c.source, flags=re.S)
                m = _HTML_WORD.search(prose)
                assert not m, f'{p.name}: {m.group(0)!r} in prose would vanish as HTML (write &lt; or put it in `code`)'
        for c in nb.cells:   # signatures as `show_doc` rendered them (settings.ini's `renderer`)
            for o in c.get('outputs', []):
                md = ''.join(o.get('data', {}).get('text/markdown', ''))
                for sig in re.findall(r'```python\n.*?\n```', md, flags=re.S):
                    assert ':NoneType' not in sig and not re.search(r'\]\(\S+\)', sig), f'{p.name}: unclean signature {sig[:200]!r}'
                prose = re.sub(r'```.*?```|`[^`\n]*`', '', md, flags=re.S)
                assert not _HTML_WORD.search(prose), f'{p.name}: an angle-bracketed word would vanish as HTML: {prose[:200]!r}'

def _cell_directives(src):
    return {l[2:].strip().split(':')[0].split()[0] for l in src.splitlines() if l.startswith('#|') and l[2:].strip()}

def test_import_cells_hold_only_imports():
    "Docs builds run every cell containing an import (even one nested in a function): such cells must hold imports only."
    import ast, json
    bad = []
    for nbf in _site_notebooks():
        for i, c in enumerate(json.loads(nbf.read_text())['cells']):
            if c['cell_type'] != 'code': continue
            src = ''.join(c['source'])
            if _cell_directives(src) & {'export', 'exports', 'exporti', 'default_exp'} or 'eval: false' in src: continue
            try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
            except SyntaxError: continue
            if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)) and \
               not all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body):
                bad.append(f'{nbf.name} cell {i}: {src.splitlines()[0][:60]!r}')
    assert not bad, 'cells mixing imports with other code (split them):\n' + '\n'.join(bad)

def test_title_cells_hold_only_title_and_subtitle():
    "nbdev 2 turns a notebook's first markdown cell into page metadata and drops the rest of it from the site: it may hold only `# Title`, `> subtitle` and `- key: value` frontmatter."
    bad = []
    for nbf in _site_notebooks():
        md = [c for c in json.loads(nbf.read_text())['cells'] if c['cell_type'] == 'markdown']
        if not md: bad.append(f'{nbf.name}: no markdown cell'); continue
        lines = [l for l in ''.join(md[0]['source']).splitlines() if l.strip()]
        if not lines or not lines[0].startswith('# '): bad.append(f'{nbf.name}: the first markdown cell does not start with "# Title"')
        extra = [l for l in lines[1:] if not (l.startswith('>') or re.match(r'^- [\w-]+:\s', l))]
        if extra: bad.append(f'{nbf.name}: {len(extra)} line(s) besides the title and subtitle, e.g. {extra[0][:60]!r}')
    assert not bad, 'first markdown cells that lose text on the site (move it to the next cell):\n' + '\n'.join(bad)

def test_no_widget_state_or_progress_output():
    "Committed notebooks carry no ipywidgets state (progress bars saved into the notebook's metadata) and no widget outputs."
    bad = []
    for nbf in _site_notebooks():
        nb = json.loads(nbf.read_text())
        if 'widgets' in nb.get('metadata', {}): bad.append(f'{nbf.name}: widget state in the notebook metadata')
        for c in nb['cells']:
            for o in c.get('outputs', []):
                if 'application/vnd.jupyter.widget-view+json' in o.get('data', {}): bad.append(f"{nbf.name}: a widget output in cell {c.get('id')}")
    assert not bad, 'remove widget state (progress bars) from committed notebooks:\n' + '\n'.join(bad)

_MACHINE_PATH = re.compile(r'(?<![\w.])/(?:work|tmp|home|root|usr|opt|var|mnt)/[\w.-]+')
_PROGRESS = re.compile(r'\d+%\|')

def test_outputs_have_no_stderr_progress_or_machine_paths():
    "Committed outputs are what a reader sees on the site: no stderr (warnings), no progress bars, no absolute path of the machine that ran them."
    bad = []
    for nbf in _site_notebooks():
        for i, c in enumerate(json.loads(nbf.read_text())['cells']):
            for o in c.get('outputs', []):
                if o.get('output_type') == 'stream' and o.get('name') == 'stderr': bad.append(f'{nbf.name} cell {i}: stderr output')
                texts = [o.get('text', '')] + [v for k, v in o.get('data', {}).items() if k.startswith('text/')]
                txt = ''.join(''.join(t) if isinstance(t, list) else str(t) for t in texts)
                if _PROGRESS.search(txt): bad.append(f'{nbf.name} cell {i}: a progress bar')
                if m := _MACHINE_PATH.search(txt): bad.append(f'{nbf.name} cell {i}: a machine path {m.group(0)!r}')
    assert not bad, 'clear or re-run these outputs:\n' + '\n'.join(bad)

def test_shipped_assets_have_no_machine_paths():
    "The model files the package ships (configs, cards, logs) name no folder of the machine that trained them."
    bad = [f'{f}: {m.group(0)!r}' for f in _shipped_files() if f.startswith('diffda_nb/assets/') and f.endswith(('.json', '.md', '.txt', '.yaml'))
           for m in [_MACHINE_PATH.search((ROOT/f).read_text(errors='replace'))] if m]
    assert not bad, 'machine paths in shipped assets:\n' + '\n'.join(bad)

def test_sidebar_lists_every_notebook_once():
    "The grouped sidebar (in _quarto.yml; custom_sidebar = True) holds every page of the site exactly once, and nothing else."
    import yaml
    from collections import Counter
    quarto = yaml.safe_load((ROOT/'_quarto.yml').read_text())
    side = quarto['website']['sidebar']['contents']
    assert 'sidebar.yml' not in quarto.get('metadata-files', []) and not (ROOT/'nbs'/'sidebar.yml').exists(), 'one sidebar: _quarto.yml'
    def walk(items):
        for it in items:
            if isinstance(it, dict): yield from walk(it.get('contents', []))
            else: yield it
    listed = Counter(walk(side))
    pages = {p.relative_to(ROOT/'nbs').as_posix() for p in _site_notebooks()}
    assert not [k for k, v in listed.items() if v > 1], f'listed twice: {[k for k, v in listed.items() if v > 1]}'
    assert set(listed) == pages, f'missing from the sidebar in _quarto.yml: {sorted(pages - set(listed))}; listed but not a notebook: {sorted(set(listed) - pages)}'
    assert 'custom_sidebar = True' in (ROOT/'settings.ini').read_text(), 'settings.ini must say custom_sidebar = True, or nbdev_docs rewrites the sidebar'

#!/usr/bin/env python
"""Write README.md from nbs/index.ipynb, offline (Quarto, which `nbdev_readme` needs, is not available here).

Markdown cells are copied; code cells lose their `#|` directives and become fenced blocks followed by
their text outputs; cells marked `hide`, `export`/`exporti`, or `echo: false` (source hidden) are
treated as nbdev's docs would. `--check` exits 1 when README.md is stale, printing a diff.

    python tools/make_readme.py          # rewrite README.md
    python tools/make_readme.py --check  # CI: is README.md current?
"""
import argparse, base64, difflib, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = '<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n\n'

def _directives(src):
    "Split a code cell into ({directive: value}, remaining source lines)."
    lines, found, body = src.splitlines(), {}, []
    for line in lines:
        spec = line.strip()
        if spec.startswith('#|'):
            spec = spec[2:].strip()
            if ':' in spec:
                k, v = spec.split(':', 1)
                found[k.strip()] = v.strip()
            else: found.update({w: '' for w in spec.split()})
        else: body.append(line)
    while body and not body[0].strip(): body.pop(0)
    return found, body

def _text(x): return ''.join(x) if isinstance(x, list) else x

FIG_DIR = 'README_files'

def _outputs(cell, figures):
    "Outputs of a code cell: text as fenced blocks, PNG pictures as links to files collected in `figures`."
    chunks = []
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream' and o.get('name') == 'stdout': chunks.append(_text(o['text']))
        elif o.get('output_type') in ('execute_result', 'display_data'):
            data = o.get('data', {})
            if 'image/png' in data:
                name = f"{FIG_DIR}/figure-{len(figures) + 1}.png"
                figures[name] = base64.b64decode(_text(data['image/png']))
                chunks.append(('md', f"![]({name})"))
            elif 'text/markdown' in data: chunks.append(('md', _text(data['text/markdown'])))
            elif 'text/plain' in data and not any(k.startswith('image/') for k in data): chunks.append(_text(data['text/plain']))
    out = []
    for c in chunks:
        if isinstance(c, tuple): out.append(c[1].rstrip() + '\n')
        else: out.append('```\n' + c.rstrip() + '\n```\n')
    return out

def render(nb_path=ROOT/'nbs'/'index.ipynb'):
    "The README text for notebook `nb_path`, and its pictures as {relative path: PNG bytes}."
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    parts, figures = [HEADER], {}
    for cell in nb['cells']:
        src = _text(cell['source'])
        if cell['cell_type'] == 'markdown':
            parts.append(src.rstrip() + '\n')
        elif cell['cell_type'] == 'code':
            d, body = _directives(src)
            if any(k in d for k in ('hide', 'export', 'exporti', 'default_exp')): continue
            if d.get('include') == 'false': continue
            if d.get('echo') != 'false' and body: parts.append('```python\n' + '\n'.join(body).rstrip() + '\n```\n')
            if d.get('output') != 'false': parts += _outputs(cell, figures)
    return '\n'.join(parts), figures

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--check', action='store_true', help='exit 1 if README.md is not what index.ipynb generates')
    a = ap.parse_args(argv)
    (new, figures), readme = render(), ROOT/'README.md'
    old = readme.read_text(encoding='utf-8') if readme.exists() else ''
    old_figs = {f"{FIG_DIR}/{p.name}": p.read_bytes() for p in sorted((ROOT/FIG_DIR).glob('*.png'))}
    if a.check:
        if new != old or figures != old_figs:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), 'README.md', 'from index.ipynb'))
            if figures != old_figs: print(f"pictures in {FIG_DIR}/ differ from the notebook's ({sorted(old_figs)} vs {sorted(figures)})")
            print('\nREADME.md is stale: run `python tools/make_readme.py` and commit it.')
            return 1
        return 0
    for name in old_figs: (ROOT/name).unlink()
    for name, png in figures.items():
        (ROOT/name).parent.mkdir(exist_ok=True); (ROOT/name).write_bytes(png)
    readme.write_text(new, encoding='utf-8')
    return 0

if __name__ == '__main__': sys.exit(main())

#!/usr/bin/env python
"""Write README.md from nbs/index.ipynb, offline (Quarto, which `nbdev_readme` needs, is not available here).

Markdown cells are copied; code cells lose their `#|` directives and become fenced blocks followed by
their text outputs; cells marked `hide`, `export`/`exporti`, or `echo: false` (source hidden) are
treated as nbdev's docs would. `--check` exits 1 when README.md is stale, printing a diff.

    python tools/make_readme.py          # rewrite README.md
    python tools/make_readme.py --check  # CI: is README.md current?
"""
import argparse, difflib, json, sys
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

def _outputs(cell):
    "Text outputs of a code cell (streams and plain-text results), as fenced blocks."
    chunks = []
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream' and o.get('name') == 'stdout': chunks.append(_text(o['text']))
        elif o.get('output_type') in ('execute_result', 'display_data'):
            data = o.get('data', {})
            if 'text/markdown' in data: chunks.append(('md', _text(data['text/markdown'])))
            elif 'text/plain' in data and not any(k.startswith('image/') for k in data): chunks.append(_text(data['text/plain']))
    out = []
    for c in chunks:
        if isinstance(c, tuple): out.append(c[1].rstrip() + '\n')
        else: out.append('```\n' + c.rstrip() + '\n```\n')
    return out

def render(nb_path=ROOT/'nbs'/'index.ipynb'):
    "The README text for notebook `nb_path`."
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    parts = [HEADER]
    for cell in nb['cells']:
        src = _text(cell['source'])
        if cell['cell_type'] == 'markdown':
            parts.append(src.rstrip() + '\n')
        elif cell['cell_type'] == 'code':
            d, body = _directives(src)
            if any(k in d for k in ('hide', 'export', 'exporti', 'default_exp')): continue
            if d.get('include') == 'false': continue
            if d.get('echo') != 'false' and body: parts.append('```python\n' + '\n'.join(body).rstrip() + '\n```\n')
            if d.get('output') != 'false': parts += _outputs(cell)
    return '\n'.join(parts)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--check', action='store_true', help='exit 1 if README.md is not what index.ipynb generates')
    a = ap.parse_args(argv)
    new, readme = render(), ROOT/'README.md'
    old = readme.read_text(encoding='utf-8') if readme.exists() else ''
    if a.check:
        if new != old:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), 'README.md', 'from index.ipynb'))
            print('\nREADME.md is stale: run `python tools/make_readme.py` and commit it.')
            return 1
        return 0
    readme.write_text(new, encoding='utf-8')
    return 0

if __name__ == '__main__': sys.exit(main())

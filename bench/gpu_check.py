#!/usr/bin/env python
"""Everything GPU-side in one script: the checks and timings that need an accelerator, in resumable parts.

Parts, in order of value (each sized to fit one 10-minute device command; `--list` shows the expected minutes):
  generation  bench/generation.py settings (a)-(e), run as two halves ('cde' first, then 'ab') merged into one result
  gpu_cells   every `#| gpu` cell of every notebook: one notebook per process, its gpu cells forced on (as
              DIFFDA_TEST_FLAGS=gpu does in tests/test_notebooks.py); pass/fail, seconds and the gpu cells' output
  finetune    Textual Inversion and LoRA training steps/s at 512² on the SD 1.5 architecture (random weights)
  classifier  `train_classifier` images/s in bf16, eager and with torch.compile (ResNet-50 at 224 px, SmallCNN at 32 px)
  mini_gpu    the DiffDA-Mini 'gpu' training recipe (`train_mini(out, 'gpu', device='cuda')`), each stage cut when the
              time budget says so; steady-state steps/s per stage and the projected time of the whole recipe

Every part writes one JSON, `gpu_check-<part>-<device>.json`, into the results folder (default bench/results/, which
only ever holds figures measured on a GPU) and copies it into $OUT when that variable is set. Every part is made of
pieces; the JSON is rewritten after each one, so a killed run keeps what it measured, and a rerun only runs the pieces
still missing (a part whose JSON is complete is skipped unless --force). `--budget-s` stops starting pieces that would
not fit into the time left and caps the Mini training.

`python bench/gpu_check.py --dry-run` exercises every part on the CPU with tiny settings (results in a temporary folder,
marked "dry_run": true) and exits non-zero if any part fails. See bench/README.md for a device session.
"""
import argparse, ast, configparser, datetime, gc, importlib.util, json, math, os, platform, re, shutil, signal
import subprocess, sys, tempfile, threading, time, traceback
from collections import deque
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / 'bench'
RESULTS = BENCH / 'results'
NBS = ROOT / 'nbs'
PARTS = ('generation', 'gpu_cells', 'finetune', 'classifier', 'mini_gpu')
ABOUT = {'generation': 'bench/generation.py (a)-(e) in two halves',
         'gpu_cells': 'the #| gpu cells of every notebook, one notebook per process',
         'finetune': 'Textual Inversion and LoRA steps/s, SD 1.5 architecture, 512², bf16',
         'classifier': 'train_classifier images/s, bf16, eager and torch.compile',
         'mini_gpu': "DiffDA-Mini 'gpu' recipe timing, capped by the budget"}
# Expected seconds of each piece on an H100/H200 (estimates from DESIGN's reference numbers until a run replaces them:
# every JSON records the seconds each piece really took).
EXPECTED = {
    'generation': {'cde': 420, 'ab': 150},   # the engine's figures first: (a)-(b) fit into a short second command
    'gpu_cells': {'static': 5, '02_models': 150, '04b_lora': 180, '05b_generate': 660, '13_gif': 180,
                  '14_diff_ii': 180, '15_distdiff': 180, '17_diff_mix': 180, '21_classifier': 120, '32_mini': 3600},
    'finetune': {'textual_inversion': 90, 'lora': 90, 'ti_then_lora': 150},
    'classifier': {'resnet50-eager': 60, 'resnet50-compile': 150, 'small_cnn-eager': 30, 'small_cnn-compile': 60},
    'mini_gpu': {'train': 480},
}
# Notebooks whose gpu cell another part measures, and which cannot fit one 10-minute command: run with --all-notebooks.
NB_COVERED = {'05b_generate': 'its gpu cell runs bench/generation.py in full (~10 min): part generation measures the same',
              '32_mini': "its gpu cell trains the whole 'gpu' recipe (far over 10 min) on the full Fashion-MNIST: "
                         "part mini_gpu times that recipe within the budget"}
MINI_STAGES = {'VAE': 'vae', 'UNet + text encoder': 'generator', 'CLIP': 'clip', 'feature net': 'features'}
FMNIST_TRAIN = 60000   # Fashion-MNIST training images (the feature net's steps depend on it)
OK_STATES = ('ok', 'failed')   # a piece in one of these is done; 'timeout', 'deferred', 'running', 'error' are run again


class PieceFailed(Exception):
    "A piece that ran and failed; what it measured and found is kept."
    def __init__(self, msg, figures=None, details=None):
        super().__init__(msg); self.figures, self.details = figures or {}, details or {}
class PieceTimeout(PieceFailed): "A piece stopped because the time budget ran out."


# ---------------------------------------------------------------------------------------------------------------- small helpers
def now_iso(): return datetime.datetime.now().isoformat(timespec='seconds')

def slug(name): return re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-').lower() or 'device'

def write_json(obj, path, to_out=True):
    "Write `obj` atomically; with `to_out`, copy it into $OUT when that is set (what the device tool brings back)."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(json.dumps(obj, indent=1, default=str) + '\n'); os.replace(tmp, path)
    out = os.environ.get('OUT')
    if to_out and out and Path(out).is_dir() and Path(out).resolve() != path.parent.resolve():
        shutil.copyfile(path, Path(out) / path.name)

def read_json(path):
    try: return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError): return None

def _descendants(pid):
    "Every process below `pid` (from /proc), deepest last."
    kids = {}
    for d in Path('/proc').iterdir():
        if not d.name.isdigit(): continue
        try: ppid = int((d / 'stat').read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError): continue
        kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []): out.append(c); todo.append(c)
    return out

def kill_tree(p, grace=10):
    "Stop a child and everything it started (no new sessions are used, so the device tool's own clean-up still works)."
    procs = [p.pid] + _descendants(p.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in procs:
            try: os.kill(pid, sig)
            except ProcessLookupError: pass
        try: p.wait(timeout=grace); return
        except subprocess.TimeoutExpired: procs = [p.pid] + _descendants(p.pid)

def run_streamed(cmd, timeout=None, env=None, prefix='', keep=4000):
    "Run `cmd`, echoing its output with `prefix`; returns rc, seconds, timed_out and the last `keep` characters."
    t0, tail = time.perf_counter(), deque(maxlen=400)
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors='replace')
    def pump():
        for line in p.stdout: tail.append(line); print(prefix + line, end='', flush=True)
    th = threading.Thread(target=pump, daemon=True); th.start()
    timed_out = False
    try: p.wait(timeout=timeout)
    except subprocess.TimeoutExpired: timed_out = True; kill_tree(p)
    except BaseException: kill_tree(p); raise
    th.join(10)
    return dict(rc=p.returncode, seconds=round(time.perf_counter() - t0, 2), timed_out=timed_out, tail=''.join(tail)[-keep:])

def versions():
    from importlib.metadata import version, PackageNotFoundError
    out = {'python': platform.python_version()}
    for pkg in ('torch', 'diffusers', 'transformers', 'peft', 'accelerate', 'torchvision', 'open_clip_torch', 'timm',
                'nbdev', 'execnb', 'fastcore'):
        try: out[pkg] = version(pkg)
        except PackageNotFoundError: out[pkg] = None
    return out

def device_info(dry):
    "(name, facts) of the device the part measures on; imports torch."
    import torch
    if dry or not torch.cuda.is_available():
        return f'CPU ({platform.machine()}, {os.cpu_count()} cores)', dict(type='cpu', torch_threads=torch.get_num_threads())
    p = torch.cuda.get_device_properties(0)
    facts = dict(type='cuda', memory_gib=round(p.total_memory / 2**30, 1), capability=f'{p.major}.{p.minor}',
                 cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), host_cpus=os.cpu_count())
    try: facts['driver'] = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                          capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError): facts['driver'] = None
    return torch.cuda.get_device_name(0), facts

def sync():
    import torch
    if torch.cuda.is_available(): torch.cuda.synchronize()

def peak_gib():
    import torch
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None

def reset_peak():
    import torch
    if torch.cuda.is_available(): torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()

def steady_rate(stamps, warmup):
    "Events per second between stamp `warmup` and the last stamp."
    n = len(stamps) - 1 - warmup
    if n < 1: raise PieceFailed(f'too few steps to time: {len(stamps)} stamps, warm-up {warmup}')
    return n / (stamps[-1] - stamps[warmup])

def rnd(x, n=4): return None if x is None else round(float(x), n)

def tst_flags():
    cp = configparser.ConfigParser(); cp.read(ROOT / 'settings.ini')
    return cp['DEFAULT'].get('tst_flags', '').split()


# ---------------------------------------------------------------------------------------------------------------- settings
def settings(part, dry, opts):
    "Each part's settings: (dry-run value, GPU value) pairs resolved for this run."
    pick = lambda d: {k: (v[0] if dry else v[1]) if isinstance(v, tuple) else v for k, v in d.items()}
    if part == 'generation':
        tiny = ['--smoke', '--jobs', '4', '--single', '2', '--batch-b', '2', '--batch', '4', '--agree', '1', '--steps', '10']
        return dict(halves=['cde', 'ab'], script='bench/generation.py', extra_args=tiny if dry else [])
    if part == 'gpu_cells':
        return dict(force_flags=['gpu'], skip_flags=[f for f in tst_flags() if f != 'gpu'], runner='nbdev.test.test_nb',
                    all_notebooks=opts.get('all_notebooks', False), only=opts.get('notebooks'))
    if part == 'finetune':
        return pick(dict(model=('tiny_random_sd (txt2img)', 'SD 1.5 architecture, random weights (bench/generation.py build_sd15)'),
                         resolution=(64, 512), batch_size=(2, 8), steps=(6, 30), warmup=(2, 5), images=(4, 16),
                         mixed_precision=('no', 'bf16'), lora_rank=8, ti_vectors=4, checkpoint_every=0))
    if part == 'classifier':
        w = ([dict(arch='resnet18', size=32, batch=4, steps_per_epoch=2, epochs=3),
              dict(arch='small_cnn', size=32, batch=4, steps_per_epoch=2, epochs=3)] if dry else
             [dict(arch='resnet50', size=224, batch=128, steps_per_epoch=24, epochs=4),
              dict(arch='small_cnn', size=32, batch=256, steps_per_epoch=40, epochs=4)])
        return dict(workloads=w, classes=10, distinct_images=(8 if dry else 256), augment='flipcrop', lr=0.1,
                    amp=(False if dry else None), num_workers=(0 if dry else 8),
                    compile_backend=opts.get('compile_backend') or ('aot_eager' if dry else 'inductor'),
                    timing='epoch 0 is warm-up (compilation included); images/s over the later epochs (set_epoch stamps)')
    if part == 'mini_gpu':
        return dict(recipe=('smoke (10 steps a stage, 8 images a class, 1 sample a class)' if dry else 'gpu'), device=('cpu' if dry else 'cuda'),
                    budget_s=opts.get('mini_s') if opts.get('mini_s') is not None else (1 if dry else 480),
                    quality_reserve_s=(0 if dry else 90), min_steps=(4 if dry else 30),
                    dataset=('fashion_mnist_mini' if dry else opts.get('mini_dataset') or 'auto'))
    raise KeyError(part)

def pieces(part, s, dry):
    "(piece, expected seconds on a GPU) in the order they run."
    if part == 'generation': return [(h, EXPECTED[part][h]) for h in s['halves']]
    if part == 'gpu_cells':
        if dry: return [('static', 5), ('runner_selftest', 5)]
        names = [nb.stem for nb in notebooks_with_gpu_cells()]
        if s['only']: names = [n for n in names if n in s['only'] or n.split('_', 1)[0] in s['only']]
        elif not s['all_notebooks']: names = [n for n in names if n not in NB_COVERED]
        return [('static', 5)] + [(n, EXPECTED[part].get(n, 300)) for n in names]
    if part == 'finetune': return [(k, v) for k, v in EXPECTED[part].items()]
    if part == 'classifier':
        return [(f"{w['arch']}-{mode}", EXPECTED[part].get(f"{w['arch']}-{mode}", 60)) for w in s['workloads'] for mode in ('eager', 'compile')]
    if part == 'mini_gpu': return [('train', 60 if s['budget_s'] == 0 else min(s['budget_s'], 120))]   # it fits itself into what is left
    raise KeyError(part)


# ---------------------------------------------------------------------------------------------------------------- part: generation
def run_generation(ctx, piece):
    raw_path = ctx.work / 'generation.json'
    if ctx.state.get('generation_json'): write_json(ctx.state['generation_json'], raw_path, to_out=False)   # generation.py merges into it
    cmd = [sys.executable, str(BENCH / 'generation.py'), '--only', piece, '--out', str(raw_path)] + ctx.s['extra_args']
    r = run_streamed(cmd, timeout=ctx.time_left(), prefix=f'  [{piece}] ')
    if r['timed_out']: raise PieceTimeout(f"bench/generation.py --only {piece} ran out of time after {r['seconds']} s", details=dict(tail=r['tail']))
    if r['rc'] != 0: raise PieceFailed(f"bench/generation.py --only {piece} exited with {r['rc']}", details=dict(tail=r['tail']))
    raw = read_json(raw_path)
    ctx.state['generation_json'] = raw
    figures = {k: raw.get(k) for k in ('img_per_s', 'seconds', 'ratios', 'targets', 'agreement', 'steps_per_image')}
    return figures, dict(command=' '.join(cmd[1:]).replace(str(ROOT) + '/', ''), subprocess_s=r['seconds'])


# ---------------------------------------------------------------------------------------------------------------- part: gpu_cells
def directives(src):
    "nbdev directives at the top of a cell: {name: [args]}."
    out = {}
    for line in src.splitlines():
        s = line.strip()
        if not s: continue
        m = re.match(r'#\|\s*(.*)', s)
        if not m: break
        words = m.group(1).split()
        if words: out[words[0].rstrip(':')] = words[1:]
    return out

def code_cells(nb_path):
    nb = json.loads(Path(nb_path).read_text())
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        yield i, src, directives(src)

def notebooks_with_gpu_cells():
    out = []
    for p in sorted(NBS.rglob('*.ipynb')):
        rel = p.relative_to(NBS)
        if any(part.startswith(('_', '.')) for part in rel.parts): continue
        if any('gpu' in d for _, _, d in code_cells(p)): out.append(p)
    return out

def runs_in_gpu_test(src, d, skip):
    "Whether nbdev's test_nb executes this cell with `skip` flags skipped and 'gpu' forced."
    if 'nbdev_export' + '(' in src: return False
    if d.get('eval', [''])[0].lower() == 'false': return False
    return not (set(skip) & set(d))

_TRANSFORM = None
def python_source(src):
    "Cell source as plain Python (IPython magics and shell escapes turned into calls, when IPython is there)."
    global _TRANSFORM
    if _TRANSFORM is None:
        try:
            from IPython.core.inputtransformer2 import TransformerManager
            _TRANSFORM = TransformerManager().transform_cell
        except ImportError: _TRANSFORM = False
    return _TRANSFORM(src) if _TRANSFORM else src

def without_timing_magics(src):
    "Source with `%time`/`%timeit` prefixes and `%%time`/`%%timeit` lines dropped: what they run binds names too."
    src = re.sub(r'(?m)^\s*%%time(it)?\b.*$', '', src)
    return re.sub(r'(?m)^(\s*)%time(it)?\s+', r'\1', src)

_STAR = {}
def star_names(module):
    "Names `from module import *` binds, read from the module's source (its `__all__`, else its public top-level names)."
    if module in _STAR: return _STAR[module]
    names = set()
    try:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(Path(spec.origin).read_text()) if spec and spec.origin and spec.origin.endswith('.py') else None
    except Exception: tree = None
    if tree is not None:
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == '__all__' for t in targets) and isinstance(node.value, (ast.List, ast.Tuple)):
                    names |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
        if not names:
            b, _, _ = bindings(tree)
            names = {n for n in b if not n.startswith('_')}
    _STAR[module] = names
    return names

def bindings(tree):
    "(names bound anywhere, names read anywhere, modules star-imported) in a parsed cell."
    bound, loaded, stars = set(), set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name): (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): bound.add(node.name)
        elif isinstance(node, ast.arg): bound.add(node.arg)
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.name == '*': stars.append(node.module)
                else: bound.add(a.asname or a.name)
        elif isinstance(node, ast.Import): bound.update((a.asname or a.name).split('.')[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name: bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)): bound.update(node.names)
        elif type(node).__name__ in ('MatchAs', 'MatchStar') and getattr(node, 'name', None): bound.add(node.name)
    return bound, loaded, stars

def static_check(nb_path, skip):
    """Every gpu cell of a notebook: does it compile, and which names does it read that no earlier executed cell binds?
    (A heuristic: names bound anywhere in a cell, functions included, count as bound.)"""
    import builtins
    known = set(dir(builtins)) | {'get_ipython', 'display', 'In', 'Out', '_', '__', '___'}
    cells, n_run = [], 0
    for i, src, d in code_cells(nb_path):
        if not runs_in_gpu_test(src, d, skip): continue
        n_run += 1
        py = python_source(src)
        try: tree = ast.parse(py); compile(py, f'{nb_path.name}[cell {i}]', 'exec'); err = None
        except SyntaxError as e: tree, err = None, f'{type(e).__name__}: {e.msg} (line {e.lineno})'
        if tree is not None:
            with_stmts = python_source(without_timing_magics(src))
            try: tree = ast.parse(with_stmts)
            except SyntaxError: pass
        b, l, stars = bindings(tree) if tree is not None else (set(), set(), [])
        for m in stars: known |= star_names(m)
        if 'gpu' in d:
            first = next((ln for ln in src.splitlines() if ln.strip() and not ln.lstrip().startswith('#|')), '')
            cells.append(dict(cell=i, lines=len(src.splitlines()), first_line=first[:100], compiles=err is None, error=err,
                              undefined=sorted(l - b - known)))
        known |= b
    return dict(notebook=str(nb_path.relative_to(ROOT)), cells_executed=n_run, gpu_cells=cells)

def run_static(ctx):
    out, bad = {}, []
    for nb in notebooks_with_gpu_cells():
        r = static_check(nb, ctx.s['skip_flags'])
        r['runs_in_part'] = nb.stem not in NB_COVERED or bool(ctx.s['all_notebooks'])
        if nb.stem in NB_COVERED: r['covered_by_part'] = NB_COVERED[nb.stem]
        out[nb.stem] = r
        for c in r['gpu_cells']:
            note = 'compiles' if c['compiles'] else c['error']
            if c['undefined']: note += f"; names no earlier cell binds: {', '.join(c['undefined'])}"
            print(f"  {nb.stem:<16} cell {c['cell']:>3} ({c['lines']:>2} lines) {note}  | {c['first_line'][:60]}")
            if not c['compiles']: bad.append(f"{nb.stem} cell {c['cell']}: {c['error']}")
    ctx.state['cells'] = out
    n = sum(len(r['gpu_cells']) for r in out.values())
    figures = dict(static=dict(notebooks=len(out), gpu_cells=n, not_compiling=len(bad),
                               possibly_undefined=sum(bool(c['undefined']) for r in out.values() for c in r['gpu_cells'])))
    if bad: raise PieceFailed('gpu cells that do not compile: ' + '; '.join(bad), figures)
    return figures, {}

def notebook_child(nb, report):
    "Run one notebook exactly as tests/test_notebooks.py does with DIFFDA_TEST_FLAGS=gpu, keeping the gpu cells' output."
    import nbdev.test as nt
    from nbdev.config import get_config
    class Recording(nt.CaptureShell):
        nb = None
        def run_all(self, nb, *a, **kw):
            type(self).nb = nb
            return super().run_all(nb, *a, **kw)
    nt.CaptureShell = Recording
    cfg = get_config(path=ROOT)
    force = os.environ.get('DIFFDA_TEST_FLAGS', 'gpu').split()
    skip = [f for f in cfg.tst_flags.split() if f not in force]
    ok, secs = nt.test_nb(Path(nb).resolve(), skip_flags=skip, force_flags=force, basepath=cfg.config_path)
    outs = []
    for i, c in enumerate((Recording.nb.cells if Recording.nb is not None else [])):
        if 'gpu' not in (getattr(c, 'directives_', None) or {}): continue
        text = []
        for o in c.get('outputs', []):
            if o.get('output_type') == 'stream': text.append(''.join(o.get('text', '')))
            elif o.get('output_type') in ('execute_result', 'display_data'): text.append(''.join(o.get('data', {}).get('text/plain', '')) + '\n')
            elif o.get('output_type') == 'error': text.append(f"{o.get('ename')}: {o.get('evalue')}\n")
        text = re.sub(r'\x1b\[[0-9;]*m', '', ''.join(text))   # IPython colours its tracebacks
        outs.append(dict(cell=i, ran=bool(c.get('outputs')) or c.get('execution_count') is not None, output=text[-3000:]))
    Path(report).write_text(json.dumps(dict(ok=bool(ok), seconds=round(secs, 2), gpu_cells=outs), indent=1))
    print(f"{Path(nb).name}: {'passed' if ok else 'FAILED'} in {secs:.1f} s")
    return 0 if ok else 1

def run_notebook(ctx, nb_path):
    report = ctx.work / f'{nb_path.stem}.report.json'
    report.unlink(missing_ok=True)
    env = dict(os.environ, DIFFDA_TEST_FLAGS=' '.join(ctx.s['force_flags']))
    r = run_streamed([sys.executable, str(Path(__file__).resolve()), '--run-notebook', str(nb_path), '--report', str(report)],
                     timeout=ctx.time_left(), env=env, prefix=f'  [{nb_path.stem}] ')
    rep = read_json(report) or {}
    details = dict(passed=bool(rep.get('ok')), seconds_in_notebook=rep.get('seconds'), process_s=r['seconds'],
                   gpu_cells=rep.get('gpu_cells'))
    figures = {nb_path.stem: dict(passed=r['rc'] == 0 and bool(rep.get('ok')), seconds=r['seconds'])}
    if r['timed_out'] or not figures[nb_path.stem]['passed']: details['tail'] = r['tail'][-3000:]
    if r['timed_out']: raise PieceTimeout(f"{nb_path.name} ran out of time after {r['seconds']} s", details=details)
    if not figures[nb_path.stem]['passed']: raise PieceFailed(f'{nb_path.name} failed (exit {r["rc"]})', figures, details)
    return figures, details

def run_runner_selftest(ctx):
    "Dry run: the notebook runner on a made-up notebook (a gpu cell must run, a slow cell must not, a plain cell must)."
    mark = ctx.work / 'gpu-cell-ran'
    def cell(src): return dict(cell_type='code', execution_count=None, id=f'c{abs(hash(src)) % 10**8}', metadata={}, outputs=[], source=src)
    nb = dict(cells=[cell('x = 20'), cell(f"#| gpu\nfrom pathlib import Path\nPath({str(mark)!r}).write_text('ran')\nprint('gpu cell', x + 22)"),
                     cell("#| slow\nraise RuntimeError('a slow cell ran')")],
              metadata=dict(kernelspec=dict(display_name='Python 3', language='python', name='python3')), nbformat=4, nbformat_minor=5)
    path = ctx.work / 'selftest.ipynb'; path.write_text(json.dumps(nb))
    mark.unlink(missing_ok=True)
    figures, details = run_notebook(ctx, path)
    out = (details.get('gpu_cells') or [{}])[0].get('output', '')
    if not mark.exists() or 'gpu cell 42' not in out:
        raise PieceFailed(f'runner self-test: the gpu cell ran: {mark.exists()}, its output: {out!r}', details=details)
    return {'runner_selftest': figures['selftest']}, details

def run_gpu_cells(ctx, piece):
    if piece == 'static': return run_static(ctx)
    if piece == 'runner_selftest': return run_runner_selftest(ctx)
    return run_notebook(ctx, NBS / f'{piece}.ipynb')


# ---------------------------------------------------------------------------------------------------------------- part: finetune
def build_pipe(ctx):
    import torch
    from diffda_nb.core import pick_device, pick_dtype
    dev = pick_device('cpu' if ctx.dry else 'cuda'); dtype = pick_dtype(dev)
    torch.manual_seed(0)
    if ctx.dry:
        from diffda_nb.models import tiny_random_sd
        pipe = tiny_random_sd('txt2img', sample_size=ctx.s['resolution']).to(dev, dtype)
    else:
        sys.path.insert(0, str(BENCH))
        from generation import build_sd15
        pipe = build_sd15(dev, dtype)
    return pipe, dev, dtype

def run_finetune(ctx, piece):
    "Mirrors nbs/04b_lora.ipynb's gpu cell: a fresh pipeline per method, steady-state steps/s from the step callback."
    import numpy as np
    from PIL import Image
    from diffda_nb.data import ImageDataset
    from diffda_nb.textual_inversion import TIConfig, train_textual_inversion
    from diffda_nb.lora import LoRAConfig, train_lora
    s = ctx.s
    reset_peak()
    t_build = time.perf_counter()
    pipe, dev, dtype = build_pipe(ctx)
    build_s = time.perf_counter() - t_build
    r = s['resolution']
    ds = ImageDataset([Image.fromarray(np.random.default_rng(i).integers(0, 255, (r, r, 3), dtype=np.uint8)) for i in range(s['images'])],
                      [i % 2 for i in range(s['images'])], ['class a', 'class b'], metaclass='thing')
    common = dict(steps=s['steps'], batch_size=s['batch_size'], resolution=r, mixed_precision=s['mixed_precision'],
                  checkpoint_every=s['checkpoint_every'], progress=False, device=str(dev))
    if piece == 'textual_inversion': fn, cfg = train_textual_inversion, TIConfig(num_vectors=s['ti_vectors'], **common)
    else: fn, cfg = train_lora, LoRAConfig(rank=s['lora_rank'], **common)
    stamps = []
    def cb(step, loss): sync(); stamps.append(time.perf_counter())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=ctx.work) as d:
        if piece == 'ti_then_lora':  # the protocol's chain (nbs/17_diff_mix.ipynb): LoRA on top of the TI tokens; LoRA's rate is timed
            train_textual_inversion(pipe, ds, TIConfig(num_vectors=1, **common), Path(d) / 'ti')
            t0 = time.perf_counter()
            card = train_lora(pipe, ds, cfg, Path(d) / 'lora', ti_dir=Path(d) / 'ti', callback=cb)
        else: card = fn(pipe, ds, cfg, d, callback=cb)
    total = time.perf_counter() - t0
    sps = steady_rate(stamps, s['warmup'])
    losses = [l for _, l in card['stages'][-1]['loss']] if card.get('stages') else []
    fig = dict(steps_per_s=rnd(sps), images_per_s=rnd(sps * s['batch_size'], 2), timed_steps=len(stamps) - 1 - s['warmup'],
               until_first_step_s=rnd(stamps[0] - t0, 2), call_s=rnd(total, 2), pipeline_build_s=rnd(build_s, 2),
               dtype=str(dtype).replace('torch.', ''), peak_gpu_gib=peak_gib(), loss_finite=bool(np.all(np.isfinite(losses))))
    print(f"  {piece}: {sps:.3f} steps/s = {sps * s['batch_size']:.2f} images/s (batch {s['batch_size']}, {r}², {fig['dtype']})")
    return {piece: fig}, {}


# ---------------------------------------------------------------------------------------------------------------- part: classifier
class TimedImages:
    "Synthetic (PIL image, label) items; `set_epoch` (called by train_classifier before every epoch) stamps the time."
    def __init__(self, n, size, classes, distinct, seed=0):
        import numpy as np
        from PIL import Image
        rng = np.random.default_rng(seed)
        self.images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(min(n, distinct))]
        self.n, self.classes, self.stamps = n, [f'class {i}' for i in range(classes)], []
    def __len__(self): return self.n
    def __getitem__(self, i): return self.images[i % len(self.images)], i % len(self.classes)
    def set_epoch(self, epoch): sync(); self.stamps.append(time.perf_counter())

def run_classifier(ctx, piece):
    "Mirrors nbs/21_classifier.ipynb's gpu cell (train_classifier on CUDA, bf16 autocast by default), timed per epoch."
    import torch
    from diffda_nb.classify import TrainConfig, make_model, train_classifier
    s = ctx.s
    arch, mode = piece.rsplit('-', 1)
    w = next(w for w in s['workloads'] if w['arch'] == arch)
    n = w['batch'] * w['steps_per_epoch']
    data = TimedImages(n, w['size'], s['classes'], s['distinct_images'])
    torch._dynamo.reset()   # every compiled piece starts from an empty compile cache
    torch.manual_seed(0); model = make_model(arch, s['classes'])
    if mode == 'compile': model.compile(backend=s['compile_backend'])
    cfg = TrainConfig(epochs=w['epochs'], batch_size=w['batch'], lr=s['lr'], image_size=w['size'], augment=s['augment'],
                      amp=s['amp'], num_workers=s['num_workers'], eval_every=w['epochs'], device='cpu' if ctx.dry else 'cuda')
    reset_peak()
    t0 = time.perf_counter()
    res = train_classifier(model, data, None, cfg, progress=False)
    sync(); t_end = time.perf_counter()
    timed = (w['epochs'] - 1) * n
    ips = timed / (t_end - data.stamps[1])
    fig = dict(images_per_s=rnd(ips, 1), timed_images=timed, timed_s=rnd(t_end - data.stamps[1], 2),
               first_epoch_s=rnd(data.stamps[1] - data.stamps[0], 2), call_s=rnd(t_end - t0, 2), batch=w['batch'], size=w['size'],
               peak_gpu_gib=peak_gib(), final_train_loss=rnd(res['history']['train_loss'][-1]))
    print(f"  {piece}: {ips:.1f} images/s ({w['size']} px, batch {w['batch']}); first epoch {fig['first_epoch_s']} s")
    return {arch: {mode: fig}}, {}


# ---------------------------------------------------------------------------------------------------------------- part: mini_gpu
class _StageCut(Exception): pass

@contextmanager
def capped_stages(mini, deadline, min_steps, record, on_stage=None):
    """Patch `mini._fit` (the one training loop of every Mini stage) so that each stage stops, keeping what it measured,
    once it has used its share of the time left before `deadline` (None: never). Per-step times go into `record`."""
    orig = mini._fit
    def fit(model, loss_fn, steps, lr, seed, desc, *a, **kw):
        stage = MINI_STAGES.get(desc, desc)
        done = [k for k in MINI_STAGES.values() if k in record]
        left = max(1, len(MINI_STAGES) - len(done))
        cap = None if deadline is None else max(0.0, (deadline - time.perf_counter()) / left)
        stamps, losses, last = [], [], [None]
        t0 = time.perf_counter()
        def timed_loss(step, g):
            if last[0] is not None: losses.append(round(float(last[0].detach()), 5))   # the loop has read this loss already
            stamps.append(time.perf_counter())
            if cap is not None and len(stamps) > min_steps and stamps[-1] - t0 > cap: raise _StageCut
            last[0] = loss_fn(step, g)
            return last[0]
        try:
            info = orig(model, timed_loss, steps, lr, seed, desc, *a, **kw); cut = False
        except _StageCut:
            model.eval(); cut = True
            info = dict(steps=len(stamps) - 1, losses=losses, seconds=round(time.perf_counter() - t0, 1),
                        device=str(next(model.parameters()).device))
        warm = max(1, (len(stamps) - 1) // 10)   # a stamp is taken as each step starts, after the last one's loss.item()
        rate = steady_rate(stamps, warm) if len(stamps) > warm + 1 else None
        record[stage] = dict(planned_steps=steps, steps_run=info['steps'], cut=cut, seconds=info['seconds'], steps_per_s=rnd(rate, 3),
                             cap_s=rnd(cap, 1))
        info.update(cut=cut, planned_steps=steps)
        if on_stage is not None: on_stage()
        print(f"  mini {stage}: {info['steps']}/{steps} steps in {info['seconds']} s" + (f", {rate:.2f} steps/s" if rate else '') +
              (' (cut by the budget)' if cut else ''), flush=True)
        return info
    mini._fit = fit
    try: yield
    finally: mini._fit = orig

def mini_dataset(choice):
    if choice != 'auto': return choice
    from diffda_nb.data import load_dataset
    try: load_dataset('fashion_mnist', 'train', download=False); return 'fashion_mnist'
    except FileNotFoundError: return 'fashion_mnist_mini'

def run_mini(ctx, piece):
    "Times `train_mini(out, 'gpu', device='cuda')` (nbs/32_mini.ipynb's gpu cell) within the time left."
    from diffda_nb import mini
    s = ctx.s
    recipe = (replace(mini.MINI_RECIPES['smoke'], vae_steps=10, unet_steps=10, clip_steps=10, feat_batch=16, per_class=8,
                      eval_per_class=1) if ctx.dry else mini.MINI_RECIPES['gpu'])
    dataset = mini_dataset(s['dataset'])
    t_start = time.perf_counter()
    limit = s['budget_s'] or None
    left = ctx.time_left()
    if left is not None: limit = min(limit or left, left - 20)
    deadline = None if limit is None else t_start + max(0.0, limit - s['quality_reserve_s'])
    record = {}
    out = ctx.work / 'mini-world'
    shutil.rmtree(out, ignore_errors=True)
    with capped_stages(mini, deadline, s['min_steps'], record, lambda: ctx.save_partial({'mini': dict(stages=record)})):
        log = mini.train_mini(out, recipe, device=s['device'], progress=False, dataset=dataset)
    wall = time.perf_counter() - t_start
    q = read_json(out / 'quality.json') or {}
    n_train = FMNIST_TRAIN if not recipe.per_class else recipe.per_class * 10
    full_steps = dict(vae=recipe.vae_steps, generator=recipe.unet_steps, clip=recipe.clip_steps,
                      features=recipe.feat_epochs * math.ceil(n_train / recipe.feat_batch))
    projected = {k: rnd(full_steps[k] / v['steps_per_s'], 1) if v.get('steps_per_s') else None for k, v in record.items()}
    stage_s = sum(v['seconds'] for v in record.values())
    overhead = wall - stage_s   # data, latent encoding, saving, quality numbers
    total = sum(projected.values()) + overhead if all(projected.values()) and len(projected) == 4 else None
    fig = dict(stages=record, full_recipe_steps=full_steps, projected_stage_s=projected, measured_wall_s=rnd(wall, 1),
               overhead_s=rnd(overhead, 1), quality_s=q.get('seconds'),
               projected_full_recipe_min=rnd(total / 60, 1) if total else None,
               any_stage_cut=any(v['cut'] for v in record.values()), dataset=dataset, hardware=log.get('hardware'),
               quality_of_this_run=dict(text_to_image=(q.get('text_to_image') or {}).get('by_guidance'), fid=q.get('fid'),
                                        clip_zero_shot={k: v for k, v in (q.get('clip_zero_shot') or {}).items() if k != 'per_class'}))
    if total: print(f"  mini: projected whole {recipe.name!r} recipe {total / 60:.1f} min on this device (measured {wall:.0f} s)")
    return {'mini': fig}, dict(budget_s=rnd(limit, 1), recipe=recipe.__dict__)


# ---------------------------------------------------------------------------------------------------------------- child: one part
RUN = dict(generation=run_generation, gpu_cells=run_gpu_cells, finetune=run_finetune, classifier=run_classifier, mini_gpu=run_mini)

class Ctx:
    def __init__(self, part, dry, deadline, opts, state, work):
        self.part, self.dry, self.deadline, self.opts, self.state, self.work = part, dry, deadline, opts, state, work
        self.s, self.path = state['settings'], None
    def save_partial(self, figures):
        "Keep what a long piece has measured so far (its status stays 'running' until it ends)."
        merge(self.state['figures'], figures); self.state['updated'] = now_iso(); write_json(self.state, self.path)
    def time_left(self, margin=15):
        return None if self.deadline is None else max(1.0, self.deadline - time.time() - margin)

def merge(old, new):
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(old.get(k), dict): merge(old[k], v)
        else: old[k] = v
    return old

def part_path(results, part, device): return Path(results) / f'gpu_check-{part}-{slug(device)}.json'

def child(args):
    "Run the pending pieces of one part, rewriting its JSON after each; exit 1 if a piece failed."
    opts = json.loads(args.opts)
    dry, part = args.dry_run, args.child
    device, facts = device_info(dry)
    path = part_path(args.results, part, device)
    old = read_json(path) if not opts.get('force') else None
    if old is not None and old.get('dry_run') != dry: old = None
    old = old or {}
    s = settings(part, dry, opts)
    state = dict(part=part, about=ABOUT[part], dry_run=dry, device=device, complete=False, started=old.get('started', now_iso()),
                 updated=now_iso(), device_facts=facts, versions=versions(), settings=s, pieces=old.get('pieces', {}),
                 figures=old.get('figures', {}), **{k: v for k, v in old.items() if k in ('generation_json', 'cells')})
    deadline = args.deadline or None
    work = Path(tempfile.mkdtemp(prefix=f'gpu-check-{part}-'))
    ctx = Ctx(part, dry, deadline, opts, state, work); ctx.path = path
    todo = pieces(part, s, dry)
    state['planned_pieces'] = [p for p, _ in todo]
    failed = []
    try:
        for piece, expected in todo:
            old = state['pieces'].get(piece, {})
            if old.get('status') == 'ok' or (old.get('status') == 'failed' and not opts.get('retry_failed')):
                print(f"{part}/{piece}: {old['status']} earlier, kept"); continue
            left = ctx.time_left(margin=0)
            if left is not None and expected > left:
                state['pieces'][piece] = dict(status='deferred', expected_s=expected, left_s=round(left))
                print(f"{part}/{piece}: deferred (expected {expected} s, {left:.0f} s left)"); write_json(state, path); continue
            state['pieces'][piece] = dict(status='running', started=now_iso()); write_json(state, path)
            print(f"{part}/{piece}: running", flush=True)
            t0 = time.perf_counter()
            try: (figures, details), status = RUN[part](ctx, piece), 'ok'
            except PieceFailed as e:
                figures, details = e.figures, dict(e.details, error=str(e)[:3000])
                status = 'timeout' if isinstance(e, PieceTimeout) else 'failed'
            except Exception as e:
                figures, details, status = {}, dict(error=f'{type(e).__name__}: {e}', traceback=traceback.format_exc()[-3000:]), 'failed'
            merge(state['figures'], figures)
            state['pieces'][piece] = dict(status=status, seconds=round(time.perf_counter() - t0, 1), finished=now_iso(), **details)
            state['updated'] = now_iso()
            write_json(state, path)
            print(f"{part}/{piece}: {status} in {time.perf_counter() - t0:.1f} s" +
                  (f" -- {details.get('error', '')[:300]}" if status != 'ok' else ''), flush=True)
            if status == 'failed': failed.append(piece)
            gc.collect()
            if 'torch' in sys.modules and sys.modules['torch'].cuda.is_available(): sys.modules['torch'].cuda.empty_cache()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    state['complete'] = all(state['pieces'].get(p, {}).get('status') in OK_STATES for p in state['planned_pieces'])
    state['failed_pieces'] = sorted(p for p, v in state['pieces'].items() if v.get('status') == 'failed')
    write_json(state, path)
    return 1 if failed or state['failed_pieces'] else 0


# ---------------------------------------------------------------------------------------------------------------- parent
def list_parts(results):
    "The parts, their pieces with expected minutes, and the status of each piece in `results` (if it holds a JSON)."
    print('Parts in the order they run, with expected minutes on an H100/H200 (estimates until a run records its own):')
    for p in PARTS:
        s = settings(p, False, {})
        ps = pieces(p, s, False) if p != 'mini_gpu' else [('train', s['budget_s'])]
        print(f"  {p:<11} {sum(e for _, e in ps) / 60:>5.1f} min  {ABOUT[p]}")
        print(f"  {'':<11} {'':>9}  pieces: {', '.join(f'{k} {v / 60:.1f}' for k, v in ps)}")
        for f in sorted(Path(results).glob(f'gpu_check-{p}-*.json')):
            st = read_json(f) or {}
            done = ', '.join(f"{k} {v.get('status')}" for k, v in st.get('pieces', {}).items())
            print(f"  {'':<11} {'':>9}  {f.name} ({'complete' if st.get('complete') else 'incomplete'}): {done}")
    print('Not run by default (add --all-notebooks):')
    for k, v in NB_COVERED.items(): print(f'  {k}: {v}')

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--parts', default=','.join(PARTS), help=f"comma-separated, from {', '.join(PARTS)} (run in that order)")
    p.add_argument('--list', action='store_true', help='print the parts, their pieces and expected minutes, and exit')
    p.add_argument('--dry-run', action='store_true', help='every part on the CPU with tiny settings, into a temporary folder')
    p.add_argument('--results', type=Path, default=None, help='results folder (default bench/results/; dry run: a new temporary folder)')
    p.add_argument('--force', action='store_true', help='run the selected parts again from scratch, even if complete')
    p.add_argument('--retry-failed', action='store_true', help='run pieces that failed earlier again (default: kept as failed)')
    p.add_argument('--budget-s', type=float, default=None, help='wall-clock budget of this run: pieces that would not fit are deferred')
    p.add_argument('--mini-s', type=float, default=None, help='time for the mini_gpu part (default 480; 0: the whole recipe, uncapped)')
    p.add_argument('--mini-dataset', default=None, help="'auto' (default: fashion_mnist if found, else fashion_mnist_mini) or a name")
    p.add_argument('--notebooks', default=None, help='gpu_cells: only these notebooks (e.g. 02_models,13 )')
    p.add_argument('--all-notebooks', action='store_true', help=f"gpu_cells: also {', '.join(NB_COVERED)}")
    p.add_argument('--compile-backend', default=None, help='classifier: torch.compile backend (default inductor; dry run aot_eager)')
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    p.add_argument('--opts', default='{}', help=argparse.SUPPRESS)
    p.add_argument('--deadline', type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument('--run-notebook', default=None, help=argparse.SUPPRESS)
    p.add_argument('--report', default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.parts = [x.strip() for x in a.parts.split(',') if x.strip()]
    if set(a.parts) - set(PARTS): p.error(f"--parts: unknown {sorted(set(a.parts) - set(PARTS))}; choose from {', '.join(PARTS)}")
    return a

def main(argv=None):
    args = parse_args(argv)
    if args.run_notebook: return notebook_child(args.run_notebook, args.report)
    if args.child: return child(args)
    if args.list: list_parts(args.results or RESULTS); return 0
    t_start = time.time()
    os.environ.setdefault('MPLBACKEND', 'Agg'); os.environ.setdefault('TQDM_DISABLE', '1')
    os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    os.environ['PYTHONUNBUFFERED'] = '1'
    os.environ['PYTHONPATH'] = os.pathsep.join(dict.fromkeys([str(ROOT)] + [x for x in os.environ.get('PYTHONPATH', '').split(os.pathsep) if x]))
    if args.dry_run:
        results = args.results or Path(tempfile.mkdtemp(prefix='gpu-check-dry-'))
        if results.resolve() == RESULTS.resolve() or RESULTS.resolve() in results.resolve().parents:
            print(f'--dry-run never writes into {RESULTS}: it only holds figures measured on a GPU'); return 2
    else:
        import torch
        if not torch.cuda.is_available():
            print('no CUDA device: use --dry-run to check this script on a CPU (bench/results/ only holds GPU figures)'); return 2
        results = args.results or RESULTS
    device, _ = device_info(args.dry_run)
    results.mkdir(parents=True, exist_ok=True)
    deadline = t_start + args.budget_s if args.budget_s else 0
    opts = dict(force=args.force, retry_failed=args.retry_failed, mini_s=args.mini_s, mini_dataset=args.mini_dataset,
                notebooks=[x.strip() for x in args.notebooks.split(',')] if args.notebooks else None,
                all_notebooks=args.all_notebooks, compile_backend=args.compile_backend)
    print(f"gpu_check: parts {', '.join(args.parts)}{' (dry run)' if args.dry_run else ''}; results in {results}"
          + (f'; budget {args.budget_s:.0f} s' if args.budget_s else ''), flush=True)
    summary = {}
    for part in args.parts:
        left = deadline - time.time() if deadline else None
        if left is not None and left < 60:
            summary[part] = dict(rc=None, note=f'not started: {left:.0f} s left'); print(f'{part}: not started ({left:.0f} s left)'); continue
        done = read_json(part_path(results, part, device)) or {}
        if done.get('complete') and not args.force and not (args.retry_failed and done.get('failed_pieces')):
            summary[part] = dict(rc=None); print(f'{part}: complete in {part_path(results, part, device).name}, skipped'); continue
        cmd = [sys.executable, str(Path(__file__).resolve()), '--child', part, '--results', str(results.resolve()),
               '--opts', json.dumps(opts), '--deadline', str(deadline)] + (['--dry-run'] if args.dry_run else [])
        print(f'=== {part}', flush=True)
        r = run_streamed(cmd, timeout=None if left is None else left + 10)
        summary[part] = dict(rc=r['rc'], seconds=r['seconds'], timed_out=r['timed_out'])
        if r['rc'] != 0 and r['rc'] != 1: summary[part]['tail'] = r['tail'][-1500:]
    # the table: every part's pieces as its JSON says
    bad = False
    print(f"\n{'part':<12}{'piece':<22}{'status':<10}{'s':>8}")
    for part in args.parts:
        state, info = read_json(part_path(results, part, device)), summary[part]
        if info.get('rc') not in (0, 1, None):   # the part's process crashed or was stopped at the deadline
            bad = True
            print(f"{part:<12}{'(process)':<22}{'killed' if info['timed_out'] else 'crashed':<10}{info['seconds']:>8}")
            if info.get('tail'): print(info['tail'])
        if state is None:
            bad = bad or args.dry_run
            print(f"{part:<12}{'-':<22}{info.get('note', 'no result')}"); continue
        for piece in state.get('planned_pieces', []):
            st = state['pieces'].get(piece, {})
            status = st.get('status', 'pending')
            if status == 'running': status = 'killed'
            bad = bad or status in ('failed', 'timeout', 'killed') or (args.dry_run and status != 'ok')
            print(f"{part:<12}{piece:<22}{status:<10}{st.get('seconds', ''):>8}")
    print(f"\ngpu_check: {time.time() - t_start:.0f} s; JSON in {results}" + (' (dry run: figures mean nothing)' if args.dry_run else ''))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())

"""Synthetic Mini images read as drawn (garment in the centred 28 px of a 32-px frame) vs cropped to the real images' geometry
(`core.Manifest.image`, the library's default): the same experiments, seeds and generated images, trained and tested twice.

    python bench/geometry.py diffusemix real_guidance   # ~4 min per method on one CPU thread
"""
import argparse, json, tempfile
from pathlib import Path
import numpy as np
from diffda_nb import core
from diffda_nb.protocol import ExperimentConfig, DataConfig, MethodConfig, GeneratorConfig, ClassifierConfig, run_experiment
from diffda_nb.mini_ip2p import MINI_STYLES
from diffda_nb.recipes import import_methods

SETTINGS = dict(   # chapter 16's end-to-end run for DiffuseMix (full replacement); Real Guidance with its defaults (full concatenation)
    diffusemix=dict(generator=GeneratorConfig('mini-ip2p', scheduler='euler-a', size=32),
                    method=MethodConfig('diffusemix', multiplier=1, steps=10, options=dict(styles=list(MINI_STYLES), ramp=3, n_fractals=20))),
    real_guidance=dict(generator=GeneratorConfig('mini'), method=MethodConfig('real_guidance', multiplier=1, steps=10)))

def as_drawn(self, row): return core.load_image(self.image_path(row))   # the file as the generator wrote it

def main(methods, seeds):
    import_methods(); cropped = core.Manifest.image; out = {}
    for mode, reader in (('cropped', cropped), ('as_drawn', as_drawn)):
        core.Manifest.image = reader
        runs = Path(tempfile.mkdtemp())
        common = dict(out_dir=str(runs), seeds=seeds, data=DataConfig('fashion_mnist_mini', shots=10, test_limit=200),
                      classifier=ClassifierConfig('small_cnn', train=dict(epochs=15, batch_size=32, lr=0.05, image_size=32)))
        for name, kw in [('baseline', dict(method=MethodConfig('baseline')))] + [(m, SETTINGS[m]) for m in methods]:
            res = run_experiment(ExperimentConfig(name=name, **kw, **common), progress=False)
            out[f'{mode}/{name}'] = [100 * json.loads(Path(p).read_text())['top1'] for p in res['results']]
    core.Manifest.image = cropped
    for k, v in out.items(): print(f'{k:28s} {np.mean(v):5.1f} ± {np.std(v, ddof=1):4.1f}  {v}')
    return out

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0]); p.add_argument('methods', nargs='+', choices=list(SETTINGS))
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2]); a = p.parse_args()
    main(a.methods, a.seeds)

#!/usr/bin/env python
"""Build diffda_nb/assets/fashion_mnist_mini.npz, the Fashion-MNIST subset shipped with diffda_nb.

The first 100 training and the first 50 test images of each class, in file order, of the official
Fashion-MNIST idx files (default: the Debian package `dataset-fashion-mnist`,
/usr/share/datasets/fashion-mnist/). The output is byte-for-byte reproducible.

Usage: python tools/make_fmnist_mini.py [--root DIR] [--out FILE] [--n-train 100] [--n-test 50]
"""
import argparse, hashlib
from pathlib import Path
from diffda_nb.data import make_fashion_mnist_mini, FASHION_MNIST_DEBIAN

ROOT = Path(__file__).resolve().parents[1]

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--root', default=str(FASHION_MNIST_DEBIAN), help='folder with the four Fashion-MNIST idx files (.gz or not)')
    ap.add_argument('--out', default=str(ROOT/'diffda_nb'/'assets'/'fashion_mnist_mini.npz'))
    ap.add_argument('--n-train', type=int, default=100, help='training images per class')
    ap.add_argument('--n-test', type=int, default=50, help='test images per class')
    a = ap.parse_args()
    out = make_fashion_mnist_mini(a.out, root=a.root, n_train=a.n_train, n_test=a.n_test)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {hashlib.sha256(out.read_bytes()).hexdigest()[:16]})")

if __name__ == '__main__': main()

"""Packaging for diffda_nb, driven by `settings.ini` (nbdev 2 layout).

Unlike the classic nbdev template this does not import `pkg_resources` (removed from current
setuptools); requirement strings are checked with `packaging` instead.
"""
from configparser import ConfigParser
import setuptools
from packaging.requirements import Requirement

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

required = ['version', 'description', 'keywords', 'author', 'author_email', 'license', 'min_python', 'lib_name', 'git_url']
missing = [k for k in required if not cfg.get(k)]
if missing: raise SystemExit(f"settings.ini: missing required key(s) {missing}")

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
lic = licenses[cfg['license']]
py_versions = '3.10 3.11 3.12 3.13'.split()
min_python = cfg['min_python']

def reqs(key):
    "Requirement strings from a space-separated settings.ini field, each validated by `packaging`."
    return [str(Requirement(r)) for r in cfg.get(key, '').split()]

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    license=lic[0],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title(),
                 'License :: ' + lic[1]]
                + ['Programming Language :: Python :: ' + v for v in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['diffda_nb', 'diffda_nb.*']),
    include_package_data=True,
    install_requires=reqs('requirements'),
    extras_require={'dev': reqs('dev_requirements'), 'retrieval': reqs('retrieval_requirements')},
    dependency_links=cfg.get('dep_links', '').split(),
    python_requires='>=' + min_python,
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    author=cfg['author'], author_email=cfg['author_email'],
    description=cfg['description'], keywords=cfg['keywords'],
)

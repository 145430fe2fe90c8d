"""``executed_notebooks``: every notebook of ``experiments/notebooks`` run as a new user would, in a fresh virtualenv.

Each notebook gets a new virtualenv without posekit, a kernel running that virtualenv's python, and a working
directory outside the clone; its first cell must install posekit (from ``POSEKIT_SOURCE``, here a copy of the
clone's package source, as a user would give a git URL in Colab). So that nothing is downloaded, the virtualenv sees the test environment's
site-packages folder as a plain path (TensorFlow, matplotlib, ipykernel...): a plain path's ``.pth`` files are
not run, so the test environment's editable posekit install stays invisible and ``import posekit`` fails until
the first cell has installed it. The notebooks run once per session, :data:`CONCURRENT_NOTEBOOKS` at a time
(a kernel keeps about one core busy), each in its own folder with its own environment variables.
"""
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import re
import shutil
import site
import subprocess
import venv
from typing import Dict, List

import jupyter_client
import nbclient
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / 'experiments' / 'notebooks'
CELL_TIMEOUT_S = 600  # hang guard only, per cell
KERNEL_NAME = 'posekit-fresh-venv'
CONCURRENT_NOTEBOOKS = 2
#: notebook -> environment variables of its run (besides POSEKIT_SOURCE and TMPDIR = its own temp folder), longest
#: first.
RUNS = {
    'acae.ipynb': {'POSEKIT_NOTEBOOK_QUICK': '1'},
    'quickstart.ipynb': {'POSEKIT_NOTEBOOK_QUICK': '1'},  # no POSEKIT_SAVED_MODEL: it trains its own
    'gcn_lifting.ipynb': {'POSEKIT_NOTEBOOK_QUICK': '1'},
    'datasets.ipynb': {},
}


def _is_figure(output: dict) -> bool:
    """A displayed PNG output."""
    return output.get('output_type') == 'display_data' and 'image/png' in output.get('data', {})


@dataclasses.dataclass
class ExecutedNotebook:
    """The code cells of an executed notebook and what they printed and plotted."""

    cells: List[dict]
    venv: pathlib.Path  # the fresh virtualenv the notebook ran in
    tmp: pathlib.Path  # its TMPDIR

    def outputs(self, kind: str) -> List[dict]:
        return [o for c in self.cells for o in c.get('outputs', []) if o.get('output_type') == kind]

    @property
    def stdout(self) -> str:
        return '\n'.join(o.get('text', '') for o in self.outputs('stream') if o.get('name') == 'stdout')

    @property
    def text(self) -> str:
        """stdout and stderr of every cell, in order."""
        return '\n'.join(o.get('text', '') for o in self.outputs('stream'))

    @property
    def figures(self) -> List[dict]:
        """Displayed PNG outputs."""
        return [o for c in self.cells for o in c.get('outputs', []) if _is_figure(o)]

    def cells_with_figures(self) -> List[dict]:
        return [c for c in self.cells if any(_is_figure(o) for o in c.get('outputs', []))]

    def installed_posekit_here(self) -> bool:
        """The first cell printed that posekit imports from this virtualenv's site-packages."""
        pattern = rf'posekit \S+ from {re.escape(str(self.venv))}/lib/python[\d.]+/site-packages/posekit\n'
        return re.search(pattern, self.stdout) is not None


def fresh_virtualenv(folder: pathlib.Path) -> pathlib.Path:
    """A new virtualenv in ``folder`` (with pip, without posekit) that also sees this environment's
    site-packages; returns its python."""
    venv.EnvBuilder(with_pip=True).create(folder)
    python = folder / 'bin' / 'python'
    purelib = subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                             check=True, capture_output=True, text=True).stdout.strip()
    (pathlib.Path(purelib) / 'posekit_test_environment.pth').write_text('\n'.join(site.getsitepackages()) + '\n')
    return python


def execute_in_fresh_virtualenv(name: str, folder: pathlib.Path, env: Dict[str, str]) -> ExecutedNotebook:
    """Runs ``experiments/notebooks/<name>`` in a new virtualenv under ``folder`` from ``folder/work`` with these
    environment variables (and the inline matplotlib backend); fails on any cell error."""
    python = fresh_virtualenv(folder / 'venv')
    kernels = folder / 'kernels'
    (kernels / KERNEL_NAME).mkdir(parents=True)
    (kernels / KERNEL_NAME / 'kernel.json').write_text(json.dumps({
        'argv': [str(python), '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'fresh virtualenv', 'language': 'python'}))
    workdir, tmp = folder / 'work', folder / 'tmp'  # outside the clone: nothing of the repository importable
    workdir.mkdir()
    tmp.mkdir()
    kernel_env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
    # Its own copy of the package source (pip builds in the source tree: two notebooks installing from one tree
    # at once would race on its build folder).
    source = folder / 'source'
    shutil.copytree(REPO / 'posekit', source / 'posekit', ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy2(REPO / 'setup.py', source / 'setup.py')
    kernel_env.update({'POSEKIT_SOURCE': str(source), 'PIP_DISABLE_PIP_VERSION_CHECK': '1', 'TMPDIR': str(tmp),
                       'MPLBACKEND': 'module://matplotlib_inline.backend_inline', **env})
    specs = jupyter_client.kernelspec.KernelSpecManager(kernel_dirs=[str(kernels)])
    manager = jupyter_client.manager.KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, km=manager, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME,
                                     resources={'metadata': {'path': str(workdir)}})
    client.execute(env=kernel_env)
    code = [c for c in notebook.cells if c.cell_type == 'code']
    for cell in code:
        errors = [o for o in cell.get('outputs', []) if o.get('output_type') == 'error']
        assert not errors, (f'{name}: cell {cell.source[:80]!r} raised {errors[0].get("ename")}: '
                            f'{errors[0].get("evalue")}')
    return ExecutedNotebook(code, venv=folder / 'venv', tmp=tmp)


@pytest.fixture(scope='session')
def executed_notebooks(tmp_path_factory):
    """name -> ExecutedNotebook, or the exception its run raised (re-raised by :func:`executed`)."""
    root = tmp_path_factory.mktemp('notebooks')

    def run(name):
        folder = root / name.removesuffix('.ipynb')
        folder.mkdir()
        return execute_in_fresh_virtualenv(name, folder, RUNS[name])

    with concurrent.futures.ThreadPoolExecutor(CONCURRENT_NOTEBOOKS) as pool:
        futures = {name: pool.submit(run, name) for name in RUNS}
        return {name: future.exception() or future.result() for name, future in futures.items()}


@pytest.fixture
def executed(executed_notebooks):
    """``executed(name)``: the session's run of that notebook (its error re-raised)."""

    def get(name: str) -> ExecutedNotebook:
        result = executed_notebooks[name]
        if isinstance(result, BaseException):
            raise result
        return result

    return get

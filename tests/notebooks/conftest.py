"""``execute_notebook``: runs a notebook of ``experiments/notebooks`` as a new user would, in a fresh virtualenv.

Each notebook gets a new virtualenv without posekit, a kernel running that virtualenv's python, and a working
directory outside the clone; its first cell must install posekit (from ``POSEKIT_SOURCE``, here the clone, as a
user would give a git URL in Colab). So that nothing is downloaded, the virtualenv sees the test environment's
site-packages folder as a plain path (TensorFlow, matplotlib, ipykernel...): a plain path's ``.pth`` files are
not run, so the test environment's editable posekit install stays invisible and ``import posekit`` fails until
the first cell has installed it.
"""
import dataclasses
import json
import pathlib
import re
import site
import subprocess
import venv
from typing import List

import nbclient
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / 'experiments' / 'notebooks'
CELL_TIMEOUT_S = 600  # hang guard only, per cell


def _is_figure(output: dict) -> bool:
    """A displayed PNG output."""
    return output.get('output_type') == 'display_data' and 'image/png' in output.get('data', {})


@dataclasses.dataclass
class ExecutedNotebook:
    """The code cells of an executed notebook and what they printed and plotted."""

    cells: List[dict]
    venv: pathlib.Path = None  # the fresh virtualenv the notebook ran in

    def installed_posekit_here(self) -> bool:
        """The first cell printed that posekit imports from this virtualenv's site-packages."""
        pattern = rf'posekit \S+ from {re.escape(str(self.venv))}/lib/python[\d.]+/site-packages/posekit\n'
        return re.search(pattern, self.stdout) is not None

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


KERNEL_NAME = 'posekit-fresh-venv'


def fresh_virtualenv(folder: pathlib.Path) -> pathlib.Path:
    """A new virtualenv in ``folder`` (with pip, without posekit) that also sees this environment's
    site-packages; returns its python."""
    venv.EnvBuilder(with_pip=True).create(folder)
    python = folder / 'bin' / 'python'
    purelib = subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                             check=True, capture_output=True, text=True).stdout.strip()
    (pathlib.Path(purelib) / 'posekit_test_environment.pth').write_text(
        '\n'.join(site.getsitepackages()) + '\n')
    return python


@pytest.fixture
def execute_notebook(monkeypatch, tmp_path):
    """``execute_notebook(name, **env)``: runs ``experiments/notebooks/<name>`` in a fresh virtualenv with these
    environment variables (and the inline matplotlib backend); fails on any cell error; returns
    ``ExecutedNotebook``."""

    def run(name: str, **env) -> ExecutedNotebook:
        python = fresh_virtualenv(tmp_path / 'venv')
        kernels = tmp_path / 'jupyter' / 'kernels' / KERNEL_NAME
        kernels.mkdir(parents=True)
        (kernels / 'kernel.json').write_text(json.dumps({
            'argv': [str(python), '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
            'display_name': 'fresh virtualenv', 'language': 'python'}))
        workdir = tmp_path / 'work'  # outside the clone: nothing of the repository is importable from here
        workdir.mkdir()
        monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
        monkeypatch.delenv('PYTHONPATH', raising=False)
        monkeypatch.setenv('POSEKIT_SOURCE', str(REPO))
        monkeypatch.setenv('PIP_DISABLE_PIP_VERSION_CHECK', '1')
        monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME,
                                         resources={'metadata': {'path': str(workdir)}})
        client.execute()
        code = [c for c in notebook.cells if c.cell_type == 'code']
        for cell in code:
            errors = [o for o in cell.get('outputs', []) if o.get('output_type') == 'error']
            assert not errors, f'{name}: cell {cell.source[:80]!r} raised {errors[0].get("ename")}: ' \
                               f'{errors[0].get("evalue")}'
        return ExecutedNotebook(code, venv=tmp_path / 'venv')

    return run

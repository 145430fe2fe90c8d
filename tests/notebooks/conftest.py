"""``execute_notebook``: runs a notebook of ``experiments/notebooks`` in this environment's python3 kernel."""
import dataclasses
import pathlib
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


@pytest.fixture
def execute_notebook(monkeypatch):
    """``execute_notebook(name, **env)``: runs ``experiments/notebooks/<name>`` with these environment
    variables (and the inline matplotlib backend); fails on any cell error; returns ``ExecutedNotebook``."""

    def run(name: str, **env) -> ExecutedNotebook:
        monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name='python3',
                                         resources={'metadata': {'path': str(REPO)}})
        client.execute()
        code = [c for c in notebook.cells if c.cell_type == 'code']
        for cell in code:
            errors = [o for o in cell.get('outputs', []) if o.get('output_type') == 'error']
            assert not errors, f'{name}: cell {cell.source[:80]!r} raised {errors[0].get("ename")}'
        return ExecutedNotebook(code)

    return run

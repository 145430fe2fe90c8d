"""Executes experiments/notebooks/acae.ipynb in its quick mode (kernel python3 of this env)."""
import pathlib
import re

import nbclient
import nbformat

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'experiments' / 'notebooks' / 'acae.ipynb'
# Hang guard only: the quick notebook takes well under a minute on 2 idle cores.
CELL_TIMEOUT_S = 600


def _outputs(cell, kind):
    return [o for o in cell.get('outputs', []) if o.get('output_type') == kind]


def test_acae_notebook_runs_the_grid_and_shows_the_table_and_plots(monkeypatch):
    monkeypatch.setenv('POSEKIT_NOTEBOOK_QUICK', '1')
    monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name='python3',
                                     resources={'metadata': {'path': str(REPO)}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == 'code']
    for cell in code:
        assert not _outputs(cell, 'error'), cell.source[:80]
    text = '\n'.join(o.get('text', '') for c in code for o in _outputs(c, 'stream'))
    assert 'quick mode: True | motion: procedural' in text
    # One table row per (L, l1): "L l1 MPJPE ratio negmass sparsity support".
    rows = re.findall(r'^\s*(16|32|48)\s+(0|0\.1|1)\s+(\d+\.\d+)\s+(\d\.\d+)\s', text, re.M)
    assert {(n, l1) for n, l1, *_ in rows} == {(n, l1) for n in ('16', '32', '48')
                                               for l1 in ('0', '0.1', '1')}
    reference = float(re.search(r'mean cross-format disagreement: ([\d.]+) mm', text).group(1))
    for n, _, mpjpe, ratio in rows:
        assert abs(float(ratio) - float(mpjpe) / reference) < 2e-3  # printed rounding
        if n == '32':
            assert float(mpjpe) <= reference / 4
    assert re.search(r'L=32 within a quarter of the disagreement .* -> PASS', text)
    assert 'raising l1 lowers the negative mass and raises sparsity: PASS' in text
    # Column sums of the fitted weights are 1 to float64 precision.
    sums = re.search(r'\(max abs\): (\S+) (\S+)', text)
    assert float(sums.group(1)) < 1e-6 and float(sums.group(2)) < 1e-6
    images = [c for c in code
              if any('image/png' in o.get('data', {}) for o in _outputs(c, 'display_data'))]
    assert len(images) >= 3  # trade-off curves, latent points, decoder weights

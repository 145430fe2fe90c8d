"""Executes experiments/notebooks/gcn_lifting.ipynb in its quick mode (kernel python3 of this environment)."""
import pathlib
import re

import nbclient
import nbformat

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'experiments' / 'notebooks' / 'gcn_lifting.ipynb'
CELL_TIMEOUT_S = 600  # hang guard only; the quick notebook takes ~30 s on 2 idle cores


def _outputs(cell, kind):
    return [o for o in cell.get('outputs', []) if o.get('output_type') == kind]


def test_gcn_notebook_trains_a_lifter_that_beats_the_mean_pose_and_plots_it(monkeypatch):
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
    # The parameter table lists the 8 variants; pre_agg_dec is 2 x 17 times full_dec's hidden layers.
    counts = dict(re.findall(r'^(\w+)\s+([\d.]+) M parameters', text, re.M))
    assert len(counts) == 8 and float(counts['pre_agg_dec']) > 10 * float(counts['full_dec'])
    # Training lowered the error, and the lifter beats the mean pose on held-out subjects.
    windows = [int(v) for v in re.search(r'per log window: \[([\d, ]+)\]', text).group(1).split(',')]
    assert windows[-1] < windows[0] / 2
    for split in ('val', 'test'):
        mpjpe, baseline = map(float, re.search(
            rf'^{split}: MPJPE ([\d.]+) mm, PA-MPJPE [\d.]+ mm \(mean-pose baseline ([\d.]+) mm\)',
            text, re.M).groups())
        assert mpjpe < baseline, split
    images = [c for c in code
              if any('image/png' in o.get('data', {}) for o in _outputs(c, 'display_data'))]
    assert len(images) == 1  # the 2D input and the 3D prediction against ground truth

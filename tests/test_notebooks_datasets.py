"""Executes experiments/notebooks/datasets.ipynb (kernel python3 of this environment)."""
import pathlib
import time

import nbclient
import nbformat

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'experiments' / 'notebooks' / 'datasets.ipynb'
MAX_SECONDS = 90.0  # the notebook takes well under a minute; headroom for a shared machine


def _outputs(cell, kind):
    return [o for o in cell.get('outputs', []) if o.get('output_type') == kind]


def test_datasets_notebook_runs_and_shows_examples(tmp_path, monkeypatch):
    monkeypatch.setenv('TMPDIR', str(tmp_path))  # the notebook writes its shards to a temp folder
    monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                                     resources={'metadata': {'path': str(REPO)}})
    start = time.monotonic()
    client.execute()
    elapsed = time.monotonic() - start
    assert elapsed < MAX_SECONDS, f'notebook took {elapsed:.0f} s'
    code = [c for c in nb.cells if c.cell_type == 'code']
    for cell in code:
        assert not _outputs(cell, 'error'), cell.source[:80]
    text = '\n'.join(o.get('text', '') for c in code for o in _outputs(c, 'stream'))
    for name in ('h36m_like', 'mpi_like', 'smpl_like', 'coco_like'):
        assert f'{name}' in text
    assert 'h36m_17          smpl_24' in text  # the disagreement table
    images = [c for c in code if any('image/png' in o.get('data', {}) for o in _outputs(c, 'display_data'))]
    assert len(images) >= 3  # example grid, 3D plot, video strip
    # The shards went to the temporary folder.
    assert any(p.suffix == '.h5' for p in pathlib.Path(tmp_path).rglob('*.h5'))

"""Executes experiments/notebooks/quickstart.ipynb on the SavedModel of a smoke run.

The export comes from ``$POSEKIT_SMOKE_EXPORT`` when set (``tests/experiments/conftest.py`` sets it
for the rest of the session after its smoke run, which pytest collects before this file); otherwise
this test runs the smoke experiment itself into a temporary folder.
"""
import os
import pathlib
import subprocess
import sys
import time

import nbclient
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'experiments' / 'notebooks' / 'quickstart.ipynb'
SMOKE_EXPORT_ENV = 'POSEKIT_SMOKE_EXPORT'
MAX_SECONDS = 120.0  # about 20 s on a quiet machine; headroom for a shared one
SKELETONS = ('h36m_17', 'smpl_24', 'coco_19', 'mpi_inf_3dhp_17')


def _outputs(cell, kind):
    return [o for o in cell.get('outputs', []) if o.get('output_type') == kind]


@pytest.fixture
def smoke_export(tmp_path):
    existing = os.environ.get(SMOKE_EXPORT_ENV)
    if existing and (pathlib.Path(existing) / 'saved_model.pb').is_file():
        return existing
    out = tmp_path / 'smoke'
    process = subprocess.run([sys.executable, '-m', 'experiments.metrabs_acae', '--preset=smoke', f'--out={out}',
                              '--mocap-dir=procedural'], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-4000:]
    return str(out / 'saved_model')


def test_quickstart_notebook_loads_the_export_and_plots_poses(smoke_export, monkeypatch):
    monkeypatch.setenv('POSEKIT_SAVED_MODEL', smoke_export)
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
    text = '\n'.join(o.get('text', '') for c in code for o in _outputs(c, 'stream') if o.get('name') == 'stdout')
    assert f'loaded {smoke_export}' in text
    assert 'poses3d (1, 17, 3) mm | poses2d (1, 17, 2) px' in text
    joints = {'h36m_17': 17, 'smpl_24': 24, 'coco_19': 19, 'mpi_inf_3dhp_17': 17}
    for name in SKELETONS:  # every skeleton's documented shapes, with test-time augmentation
        assert f'{name:16s} poses3d (1, {joints[name]}, 3)  poses2d (1, {joints[name]}, 2)' in text
    assert "serving_default outputs: ['poses2d', 'poses3d']" in text
    assert 'root-relative MPJPE' in text
    plots = [o for c in code for o in _outputs(c, 'display_data') if 'image/png' in o.get('data', {})]
    assert len(plots) == 1  # one figure: the 2D overlay and the 3D view side by side

"""Executes experiments/notebooks/datasets.ipynb."""


def test_datasets_notebook_runs_and_shows_examples(executed):
    nb = executed('datasets.ipynb')  # the notebook writes its shards to its TMPDIR
    text = nb.text
    assert nb.installed_posekit_here()  # by the first cell, in the fresh virtualenv
    for name in ('h36m_like', 'mpi_like', 'smpl_like', 'coco_like'):
        assert name in text
    assert 'h36m_17          smpl_24' in text  # the disagreement table
    assert len(nb.cells_with_figures()) >= 3  # example grid, 3D plot, video strip
    assert any(p.suffix == '.h5' for p in nb.tmp.rglob('*.h5'))

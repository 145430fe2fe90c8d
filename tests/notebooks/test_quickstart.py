"""Executes experiments/notebooks/quickstart.ipynb on the SavedModel of the session's smoke run."""

SKELETONS = {'h36m_17': 17, 'smpl_24': 24, 'coco_19': 19, 'mpi_inf_3dhp_17': 17}


def test_quickstart_notebook_loads_the_export_and_plots_poses(execute_notebook, metrabs_smoke_run):
    export = metrabs_smoke_run[0] / 'saved_model'
    nb = execute_notebook('quickstart.ipynb', POSEKIT_SAVED_MODEL=export)
    text = nb.stdout
    assert f'loaded {export}' in text
    assert 'poses3d (1, 17, 3) mm | poses2d (1, 17, 2) px' in text
    for name, joints in SKELETONS.items():  # every skeleton's documented shapes, with test-time augmentation
        assert f'{name:16s} poses3d (1, {joints}, 3)  poses2d (1, {joints}, 2)' in text
    assert "serving_default outputs: ['poses2d', 'poses3d']" in text
    assert 'root-relative MPJPE' in text
    assert len(nb.figures) == 1  # one figure: the 2D overlay and the 3D view side by side

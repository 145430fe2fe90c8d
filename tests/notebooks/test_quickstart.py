"""Executes experiments/notebooks/quickstart.ipynb as a new user would: no SavedModel, so it trains one."""
import re

SKELETONS = {'h36m_17': 17, 'smpl_24': 24, 'coco_19': 19, 'mpi_inf_3dhp_17': 17}


def test_quickstart_notebook_trains_exports_loads_and_plots_poses(executed):
    nb = executed('quickstart.ipynb')  # quick mode, no SavedModel given: data, checkpoints, export in its TMPDIR
    text = nb.stdout
    assert nb.installed_posekit_here()
    assert 'GPU: none (CPU)' in text and '| precision: float32 |' in text
    assert 'SavedModel: none yet: trained below' in text
    # The training cell ran the loop for the quick preset's 40 steps (too few for the loss to fall: the absolute
    # loss term starts at step 20), and the loss stayed finite.
    trained = re.search(r'trained (\d+) parameters for 40 steps of \{.*\} in \d+ s; loss per log window: \[(.*)\]',
                        text)
    assert trained, text[-3000:]
    losses = [float(v) for v in trained.group(2).split(',')]
    assert len(losses) == 8 and all(0 < v < 100 for v in losses)
    export = re.search(r'loaded (\S+) in', text).group(1)
    assert export.endswith('saved_model') and export.startswith(str(nb.tmp / 'posekit_quickstart_'))
    assert 'poses3d (1, 17, 3) mm | poses2d (1, 17, 2) px' in text
    for name, joints in SKELETONS.items():  # every skeleton's documented shapes, with test-time augmentation
        assert f'{name:16s} poses3d (1, {joints}, 3)  poses2d (1, {joints}, 2)' in text
    assert "serving_default outputs: ['poses2d', 'poses3d']" in text
    assert 'root-relative MPJPE' in text
    assert len(nb.figures) == 1  # one figure: the 2D overlay and the 3D view side by side

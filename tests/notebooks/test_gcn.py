"""Executes experiments/notebooks/gcn_lifting.ipynb in its quick mode."""
import re


def test_gcn_notebook_trains_a_lifter_that_beats_the_mean_pose_and_plots_it(executed):
    nb = executed('gcn_lifting.ipynb')  # quick mode
    text = nb.text
    assert nb.installed_posekit_here()  # by the first cell, in the fresh virtualenv
    assert 'quick mode: True | motion: procedural' in text and 'GPU: none (CPU)' in text
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
    assert len(nb.cells_with_figures()) == 1  # the 2D input and the 3D prediction against ground truth

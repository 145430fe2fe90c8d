"""Executes experiments/notebooks/acae.ipynb in its quick mode."""
import re


def test_acae_notebook_runs_the_grid_and_shows_the_table_and_plots(executed):
    nb = executed('acae.ipynb')  # quick mode
    text = nb.text
    assert nb.installed_posekit_here()  # by the first cell, in the fresh virtualenv
    assert 'quick mode: True | motion: procedural' in text and 'GPU: none (CPU)' in text
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
    assert len(nb.cells_with_figures()) >= 3  # trade-off curves, latent points, decoder weights

"""What every notebook must be to run on a fresh Colab: the install cell first, posekit-only imports."""
import ast
import pathlib

import nbformat
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[2] / 'experiments' / 'notebooks').glob('*.ipynb'))


def code_cells(path):
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == 'code']


def test_there_are_four_notebooks():
    assert [p.name for p in NOTEBOOKS] == ['acae.ipynb', 'datasets.ipynb', 'gcn_lifting.ipynb', 'quickstart.ipynb']


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_the_first_cell_installs_posekit_and_reports_the_gpu(path):
    cells = code_cells(path)
    first = cells[0]
    # The same cell in every notebook: pip-installs POSEKIT_SOURCE (or the enclosing clone) only when missing.
    assert first == code_cells(NOTEBOOKS[0])[0]
    tree = ast.parse(first)
    guard = next(n for n in tree.body if isinstance(n, ast.If))
    assert ast.unparse(guard.test) == "importlib.util.find_spec('posekit') is None"
    assert "'pip', 'install'" in ast.unparse(guard) and "os.environ.get('POSEKIT_SOURCE')" in ast.unparse(guard)
    assert "GPUS = tf.config.list_physical_devices('GPU')" in first


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_imports_only_posekit_and_installed_packages(path):
    for source in code_cells(path):
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or '']
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            for module in modules:
                assert module.split('.')[0] not in ('tools', 'experiments', 'tests'), (path.name, module)
        assert 'sys.path' not in source, path.name  # nothing made importable from the working directory

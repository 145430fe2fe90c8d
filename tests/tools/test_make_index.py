import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from posekit.data import examples

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_make_index_from_a_manifest_and_errors(tmp_path):
    manifest = tmp_path / 'labels.json'
    manifest.write_text(json.dumps({'dataset': 'lab', 'skeleton': 'coco_17', 'examples': [
        {'image': 'a.jpg', 'split': 'train', 'box': [1, 2, 30, 40], 'image_size': [100, 120],
         'joints2d': [[5 + j, 6 + j] for j in range(17)]}]}))
    out = tmp_path / 'idx.h5'
    run = subprocess.run([sys.executable, '-m', 'tools.make_index', '--adapter=manifest', f'--root={manifest}',
                          '--split=train', f'--out={out}'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    source = examples.open_index(out)
    assert len(source) == 1 and source.root == str(tmp_path) and source.skeleton == 'coco_17'
    np.testing.assert_allclose(source.get([0])['joints2d'][0, 3], [8, 9])
    bad = subprocess.run([sys.executable, '-m', 'tools.make_index', '--adapter=manifest', f'--root={manifest}',
                          '--split=test', f'--out={out}'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and 'found no examples of split' in bad.stderr and 'Traceback' not in bad.stderr

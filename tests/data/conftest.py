"""Fixtures shared by the data tests."""
import h5py
import numpy as np
import pytest

from posekit.data import storage


def _reseal(path):
    """Recomputes a shard's integrity header after a deliberate edit (what a forger or a buggy writer could
    do), so that the edit is judged by the schema and value checks instead of the checksums."""
    with h5py.File(path, 'a') as f:
        if 'image' in f and storage.IMAGE_DIGESTS in f and f['image'].dtype == np.uint8:
            f[storage.IMAGE_DIGESTS][...] = storage._image_digests(f['image'][...])
    storage._seal(str(path))


@pytest.fixture
def reseal():
    """``reseal(path)``: see :func:`_reseal`."""
    return _reseal

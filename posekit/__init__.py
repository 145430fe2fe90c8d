"""posekit: 3D human pose estimation with TensorFlow/Keras 3.

Light at import: ``import posekit`` loads neither TensorFlow nor Keras; the subpackages
(``posekit.layers``, ``posekit.models``, ``posekit.train``, ...) do.
"""

__version__ = '0.1.0'

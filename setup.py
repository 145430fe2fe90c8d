"""posekit: 3D human pose estimation with TensorFlow/Keras 3."""
from setuptools import find_packages, setup

setup(
    name="posekit",
    version="0.1.0",
    description=(
        "MeTRAbs + ACAE multi-format 3D pose estimation, weight-sharing graph convolutions, "
        "mixed-precision training and massively parallel video networks in TensorFlow/Keras 3"
    ),
    license="Apache-2.0",
    python_requires=">=3.10",
    # Only the library is installed: experiments/ and tools/ run from the clone with `python -m`.
    packages=find_packages(include=["posekit", "posekit.*"]),
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "numpy",
        "h5py",
        "absl-py",
        "opencv-python-headless",
    ],
    extras_require={
        "test": ["pytest", "scipy", "matplotlib", "nbformat", "nbclient", "ipykernel",
                 "tf2onnx==1.17.0", "onnx", "onnxruntime", "ai-edge-litert"],
        # posekit.convert (TFLite/LiteRT and ONNX crop models); tf2onnx 1.17.0 is the last release and
        # the one checked with TF 2.21 / numpy 2 / protobuf 7.
        "convert": ["tf2onnx==1.17.0", "onnx", "onnxruntime", "ai-edge-litert"],
        "notebooks": ["matplotlib", "jupyter", "nbformat", "nbclient", "ipykernel"],
    },
)

"""Installs the nfnets_jax library (the `experiments/` runner is used from a checkout)."""

import pathlib

import setuptools

setuptools.setup(
    name="nfnets_jax",
    version="0.1.0",
    description=(
        "Normalizer-Free Networks (NFNets, NF-ResNets, NF-RegNets) and Adaptive Gradient "
        "Clipping in JAX/Haiku, checkpoint-compatible with DeepMind's release."
    ),
    long_description=pathlib.Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["nfnets_jax", "nfnets_jax.*"]),
    package_data={"nfnets_jax": ["py.typed", "data/*.txt"]},
    install_requires=[
        "jax>=0.10",
        "dm-haiku>=0.0.17",
        "optax>=0.2.8",
        "chex>=0.1.92",
        "ml-collections>=1.1",
        "absl-py>=2.0",
        "numpy>=2.0",
        "tensorflow-cpu>=2.21",
        "tensorflow-datasets>=4.9.10",
        "importlib_resources",
        "pillow>=10",
        "orbax-checkpoint>=0.12",
        "tensorboard>=2.21",
        "scikit-learn>=1.5",
        "safetensors>=0.8",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-xdist",
            "ruff",
            "scikit-image",
            "matplotlib",
            "nbclient",
            "nbformat",
            "ipykernel",
        ],
        "plots": ["matplotlib"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

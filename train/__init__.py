"""Pretraining on the factory's mixes: a Llama-style model, an FSDP2 loop, checkpoints, HF export.

Imports only torch, numpy, pyyaml, safetensors, tokenizers and the standard library (tensorboard,
transformers and Ray Train where present), so it runs on a bare GPU host.
"""

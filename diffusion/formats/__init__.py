"""Every reader and writer of bytes: safetensors checkpoints, diffusers folders, the manifest, bounded JSON,
image files, the Fashion-MNIST IDX files and output paths. One reader per format; each checks what it reads and
fails with a sentence naming the problem. Imports only `core` and `models`.
"""

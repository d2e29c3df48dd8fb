"""Adapters: the only modules that touch files, clusters, metrics servers or GPUs."""

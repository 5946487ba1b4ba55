"""Drivers for the lent GPU machine: CUDA, WebGPU on Dawn, the tile tuner (built here, run there)."""

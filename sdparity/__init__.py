"""sdparity: numerical parity of TVM-compiled Stable Diffusion stages against PyTorch/diffusers."""

__version__ = "0.1.0"

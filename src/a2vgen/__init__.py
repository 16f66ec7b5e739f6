"""a2vgen: federated, class-conditioned generators of audio embeddings on PyTorch Lightning."""

__version__ = "0.1.0"

"""Where a federation's embeddings come from: the demo generator, a file in the a2vgen layout, or raw ESC-50."""

from __future__ import annotations

from a2vgen.data.cache import EmbedConfig, build_embedding_cache
from a2vgen.data.demo import make_demo_embeddings
from a2vgen.data.embeddings import EmbeddingSet, load_embeddings


class EmbeddingSource:
    """Base class: ``load()`` returns an :class:`~a2vgen.data.embeddings.EmbeddingSet`."""

    def load(self) -> EmbeddingSet:
        raise NotImplementedError


class DemoEmbeddings(EmbeddingSource):
    """The built-in demo data (see :func:`~a2vgen.data.demo.make_demo_embeddings`)."""

    def __init__(
        self,
        num_classes: int = 10,
        train_per_class: int = 96,
        val_per_class: int = 16,
        test_per_class: int = 16,
        tokens: int = 4,
        audio_dim: int = 768,
        cond_tokens: int = 77,
        cond_dim: int = 768,
        seed: int = 1234,
    ) -> None:
        self.kwargs = dict(
            num_classes=num_classes,
            train_per_class=train_per_class,
            val_per_class=val_per_class,
            test_per_class=test_per_class,
            tokens=tokens,
            audio_dim=audio_dim,
            cond_tokens=cond_tokens,
            cond_dim=cond_dim,
            seed=seed,
        )

    def load(self) -> EmbeddingSet:
        return make_demo_embeddings(**self.kwargs)


class EmbeddingFile(EmbeddingSource):
    """Precomputed embeddings in the a2vgen safetensors layout (see :mod:`a2vgen.data.embeddings`)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> EmbeddingSet:
        return load_embeddings(self.path)


class RawESC50(EmbeddingSource):
    """A raw ESC-50 folder: builds (or reuses) the embedding cache with AST and the pipeline's text
    encoders on first load (see ``a2vgen embed`` and :class:`~a2vgen.data.cache.EmbedConfig`)."""

    def __init__(self, embed: EmbedConfig) -> None:
        self.embed = embed

    def load(self) -> EmbeddingSet:
        return load_embeddings(build_embedding_cache(self.embed))

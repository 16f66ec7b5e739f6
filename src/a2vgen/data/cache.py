"""``a2vgen embed``: encode a raw ESC-50 folder into the a2vgen embedding layout, with a reusable cache.

Cache layout under ``cache_dir``::

    fingerprints.json                     size, mtime and sha256 of every wav seen (skips re-hashing)
    audio/<audio-key>/<wav-sha256>.safetensors   one clip's pooled AST tokens ``[L, D]``
    text/<text-key>/<prompt-sha256>.safetensors  one prompt's ``cond.0`` (and ``cond.1``)

``audio-key`` hashes what changes an audio embedding (AST model and its files, pooling, clip length,
sample rate); ``text-key`` what changes a text embedding (pipeline and its text-encoder files, family,
T5 length). A wav's shard is named by its content, so an edited wav re-encodes only itself, a new
template re-encodes only the prompts, and a killed build resumes from the shards already written
(each written to a temp file, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.text import Text
from safetensors.torch import load_file, save_file

from a2vgen.data.embeddings import SPLITS, EmbeddingSet, save_embeddings
from a2vgen.data.esc50 import DEFAULT_SPLITS, Clip, read_esc50
from a2vgen.encoders.audio import DEFAULT_AST, SAMPLE_RATE, ASTEmbedder, load_audio
from a2vgen.encoders.text import (
    DEFAULT_PIPELINE,
    TEMPLATE,
    Family,
    TextConditioner,
    class_prompt,
    detect_family,
)
from a2vgen.io import atomic_path

log = logging.getLogger(__name__)
CACHE_VERSION = 1
RACY_NS = 2_000_000_000  # files modified this close to their hashing are hashed again


@dataclass
class EmbedConfig:
    """Options of ``a2vgen embed``.

    Args:
        root: ESC-50 folder in the official layout (``audio/``, ``meta/esc50.csv``).
        output: embedding file to write; default ``<cache_dir>/embeddings.safetensors``.
        classes: class names to keep, in label order; None keeps all.
        splits: folds of each split (``train``/``val``/``test``); folds left out are skipped.
        ast_model: AST hub id or local folder (model + ``preprocessor_config.json``).
        text_pipeline: diffusers pipeline hub id or local folder (only its text encoders are loaded).
        family: ``sd`` (CLIP states), ``flux`` (T5 states + pooled CLIP) or ``auto`` (from model_index.json).
        template: class prompt, ``{class}`` is replaced by the class name (underscores as spaces).
        tokens: AST tokens kept per clip (adaptive average pooling); None keeps the full sequence.
        clip_seconds: clips are padded/trimmed to this length at 16 kHz.
        max_sequence_length: T5 tokens per prompt (FLUX).
        batch_size: clips per AST forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ...
        cache_dir: folder of the per-clip and per-prompt cache.
        rehash: hash every wav even when its size and mtime are unchanged.
        progress: show a progress bar.
    """

    root: Path
    output: Path | None = None
    classes: list[str] | None = None
    splits: dict[str, list[int]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_SPLITS.items()})
    ast_model: str = DEFAULT_AST
    text_pipeline: str = DEFAULT_PIPELINE
    family: Family = "auto"
    template: str = TEMPLATE
    tokens: int | None = 4
    clip_seconds: float = 5.0
    max_sequence_length: int = 512
    batch_size: int = 8
    device: str = "auto"
    cache_dir: Path = Path(".a2vgen_cache")
    rehash: bool = False
    progress: bool = True


class _SpeedColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0.0:.1f} clips/s")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path, shared=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))


def _write_shard(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with atomic_path(path, shared=True) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def source_fingerprint(source: str, subfolders: tuple[str, ...] = ("",)) -> dict:
    """Identity of a model: a hub id as is; a local folder adds size and mtime of its files."""
    folder = Path(source)
    if not folder.is_dir():
        return {"id": source}
    files = sorted(p for sub in subfolders for p in (folder / sub).rglob("*") if p.is_file())
    stats = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return {"id": str(folder.resolve()), "files": _key({"stats": stats})}


def fingerprint_files(paths: list[Path], store: Path, rehash: bool = False) -> dict[str, dict]:
    """Size, mtime and sha256 of each file, keyed by absolute path.

    A hash recorded in ``store`` is reused when size and mtime match and the file was already older than
    :data:`RACY_NS` when it was hashed (so coarse mtime granularity cannot hide an edit).
    """
    known = json.loads(store.read_text()) if store.is_file() else {}
    now = time.time_ns()
    result = {}
    for path in paths:
        stat = path.stat()
        name = str(path.resolve())
        entry = known.get(name, {})
        fresh = (
            entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
            and stat.st_mtime_ns + RACY_NS < entry.get("hashed_ns", 0)
        )
        if rehash or not fresh:
            entry = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": _sha256_file(path),
                "hashed_ns": now,
            }
        known[name] = entry
        result[name] = {k: entry[k] for k in ("size", "mtime_ns", "sha256")}
    _write_json(store, known)
    return result


def _encode_audio(cfg: EmbedConfig, todo: dict[str, Path], folder: Path) -> None:
    """Embed the wavs in ``todo`` (sha256 → path) and write one shard per wav as soon as it is done.

    A worker thread reads, resamples and extracts the features of the next batch while the model runs on
    the current one (numpy, scipy and torch release the GIL), so the model never waits for audio I/O.
    """
    embedder = ASTEmbedder(cfg.ast_model, cfg.tokens, cfg.device, cfg.batch_size)
    items = list(todo.items())
    batches = [items[i : i + cfg.batch_size] for i in range(0, len(items), cfg.batch_size)]

    def prepare(batch: list[tuple[str, Path]]) -> torch.Tensor:
        return embedder.features([load_audio(path, embedder.sample_rate, cfg.clip_seconds) for _, path in batch])

    columns = (TextColumn("AST"), BarColumn(), MofNCompleteColumn(), _SpeedColumn())
    start = time.perf_counter()
    with Progress(*columns, disable=not cfg.progress) as progress, ThreadPoolExecutor(1) as pool:
        task = progress.add_task("embed", total=len(items))
        pending = pool.submit(prepare, batches[0]) if batches else None
        for i, batch in enumerate(batches):
            values = pending.result()
            if i + 1 < len(batches):
                pending = pool.submit(prepare, batches[i + 1])
            for (digest, path), emb in zip(batch, embedder.forward(values)):
                _write_shard(folder / f"{digest}.safetensors", {"audio": emb}, {"source": path.name})
            progress.advance(task, len(batch))
    elapsed = time.perf_counter() - start
    log.info("AST: embedded %d clips in %.1f s (%.1f clips/s)", len(items), elapsed, len(items) / elapsed)


def _encode_text(cfg: EmbedConfig, family: str, todo: dict[str, str], folder: Path) -> None:
    """Encode the prompts in ``todo`` (sha256 → prompt) and write one shard per prompt."""
    encoder = TextConditioner(cfg.text_pipeline, family, cfg.device, cfg.max_sequence_length)
    digests, prompts = list(todo), list(todo.values())
    for start in range(0, len(prompts), 16):
        chunk = encoder.encode(prompts[start : start + 16])
        for j, digest in enumerate(digests[start : start + 16]):
            tensors = {f"cond.{k}": c[j] for k, c in enumerate(chunk)}
            _write_shard(folder / f"{digest}.safetensors", tensors, {"prompt": prompts[start + j]})
    log.info("text: encoded %d prompts with %s (%s)", len(prompts), cfg.text_pipeline, family)


def build_embedding_cache(cfg: EmbedConfig) -> Path:
    """Write the embedding file of ``cfg`` (plus a ``.json`` manifest beside it) and return its path.

    Only clips and prompts without a cached embedding for the current settings are encoded; encoders
    are not even loaded when everything is cached.
    """
    cache_dir = Path(cfg.cache_dir)
    output = Path(cfg.output) if cfg.output is not None else cache_dir / "embeddings.safetensors"
    clips, classes = read_esc50(cfg.root, cfg.classes, cfg.splits)
    if not clips:
        raise ValueError(f"{cfg.root}: no clips for classes {classes} in folds {cfg.splits}")
    files = fingerprint_files([c.path for c in clips], cache_dir / "fingerprints.json", cfg.rehash)
    digests = [files[str(c.path.resolve())]["sha256"] for c in clips]

    audio_settings = {
        "version": CACHE_VERSION,
        "ast_model": source_fingerprint(cfg.ast_model),
        "pooling": "adaptive_avg" if cfg.tokens is not None else "none",
        "tokens": cfg.tokens,
        "clip_seconds": cfg.clip_seconds,
        "sample_rate": SAMPLE_RATE,
    }
    audio_dir = cache_dir / "audio" / _key(audio_settings)
    todo_audio = {d: c.path for d, c in zip(digests, clips) if not (audio_dir / f"{d}.safetensors").is_file()}
    log.info("audio: %d clips, %d cached, %d to encode", len(clips), len(clips) - len(todo_audio), len(todo_audio))
    if todo_audio:
        _encode_audio(cfg, todo_audio, audio_dir)

    family = detect_family(cfg.text_pipeline) if cfg.family == "auto" else cfg.family
    subfolders = ("text_encoder", "tokenizer") + (("text_encoder_2", "tokenizer_2") if family == "flux" else ())
    text_settings = {
        "version": CACHE_VERSION,
        "pipeline": source_fingerprint(cfg.text_pipeline, subfolders),
        "family": family,
        "max_sequence_length": cfg.max_sequence_length if family == "flux" else None,
    }
    text_dir = cache_dir / "text" / _key(text_settings)
    prompts = [class_prompt(c, cfg.template) for c in classes]
    prompt_digests = [hashlib.sha256(p.encode()).hexdigest()[:32] for p in prompts]
    todo_text = {d: p for d, p in zip(prompt_digests, prompts) if not (text_dir / f"{d}.safetensors").is_file()}
    if todo_text:
        _encode_text(cfg, family, todo_text, text_dir)

    audio = torch.stack([load_file(str(audio_dir / f"{d}.safetensors"))["audio"] for d in digests])
    text = [load_file(str(text_dir / f"{d}.safetensors")) for d in prompt_digests]
    cond = [torch.stack([t[f"cond.{k}"] for t in text]) for k in range(len(text[0]))]
    label_of = {c: i for i, c in enumerate(classes)}
    meta = {
        "dataset": "esc50",
        "ast_model": cfg.ast_model,
        "pooling": audio_settings["pooling"],
        "tokens": str(cfg.tokens),
        "clip_seconds": str(cfg.clip_seconds),
        "text_pipeline": cfg.text_pipeline,
        "family": family,
        "template": cfg.template,
    }
    data = EmbeddingSet(
        audio=audio,
        labels=torch.tensor([label_of[c.category] for c in clips]),
        classes=classes,
        cond=cond,
        split=torch.tensor([SPLITS[c.split] for c in clips], dtype=torch.int8),
        sources=[c.path.name for c in clips],
        meta=meta,
        origin=str(output),
    )
    save_embeddings(output, data)
    _write_json(output.with_suffix(".json"), _manifest(cfg, clips, files, audio_settings, text_settings, meta))
    log.info("wrote %s: %d clips, %d classes, audio %s", output, len(clips), len(classes), list(audio.shape[1:]))
    return output


def _manifest(
    cfg: EmbedConfig, clips: list[Clip], files: dict, audio_settings: dict, text_settings: dict, meta: dict
) -> dict:
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    return {
        "format": "a2vgen-embed-manifest/1",
        "config": config,
        "meta": meta,
        "audio_settings": audio_settings,
        "text_settings": text_settings,
        "files": {
            c.path.name: {
                **files[str(c.path.resolve())],
                "category": c.category,
                "fold": c.fold,
                "split": c.split,
            }
            for c in clips
        },
    }

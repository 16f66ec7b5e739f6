"""``a2vgen embed`` backend: layout of the output, cache reuse, invalidation, resume, bad embeddings."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"

import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file
from transformers import ASTModel, CLIPTextModel

from a2vgen.data import cache
from a2vgen.data.cache import EmbedConfig, build_embedding_cache, fingerprint_files
from a2vgen.data.embeddings import FORMAT, EmbeddingFileError, load_embeddings
from tiny_models import build_tiny_ast, build_tiny_flux, build_tiny_sd, write_mini_esc50

CLASSES = ["dog", "rooster"]
N_CLIPS = 10  # 2 classes x 5 folds x 1 clip


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("models")
    return {
        "ast": build_tiny_ast(root / "ast"),
        "sd": build_tiny_sd(root / "sd"),
        "flux": build_tiny_flux(root / "flux"),
    }


@pytest.fixture
def cfg(models, tmp_path) -> EmbedConfig:
    root = write_mini_esc50(tmp_path / "esc50", CLASSES, clips_per_fold=1, folds=[1, 2, 3, 4, 5])
    return EmbedConfig(
        root=root,
        ast_model=str(models["ast"]),
        text_pipeline=str(models["sd"]),
        clip_seconds=1.0,
        batch_size=4,
        device="cpu",
        cache_dir=tmp_path / "cache",
        progress=False,
    )


@pytest.fixture
def calls(monkeypatch) -> dict:
    """Count the samples that go through the AST and CLIP forward passes."""
    counts = {"ast": 0, "text": 0}
    for key, cls in (("ast", ASTModel), ("text", CLIPTextModel)):
        original = cls.forward

        def counting(self, *args, _original=original, _key=key, **kwargs):
            first = args[0] if args else next(iter(kwargs.values()))
            counts[_key] += first.shape[0]
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", counting)
    return counts


def test_output_layout_and_manifest(cfg, calls) -> None:
    out = build_embedding_cache(cfg)
    data = load_embeddings(out)
    assert data.audio.shape == (N_CLIPS, 4, 64) and data.classes == CLASSES
    assert data.labels.tolist() == [0] * 5 + [1] * 5
    assert data.split.tolist() == [0, 0, 0, 1, 2] * 2
    assert [list(c.shape) for c in data.cond] == [[2, 77, 32]]
    assert data.sources[0] == "1-000000-A-0.wav"
    assert data.meta["template"] == "a photo of a {class}" and data.meta["family"] == "sd"
    manifest = json.loads(out.with_suffix(".json").read_text())
    entry = manifest["files"]["1-000000-A-0.wav"]
    assert entry["size"] > 0 and len(entry["sha256"]) == 64 and entry["split"] == "train"
    assert manifest["audio_settings"]["tokens"] == 4
    assert calls == {"ast": N_CLIPS, "text": 2}


def test_second_run_runs_no_encoder(cfg, calls) -> None:
    first = load_embeddings(build_embedding_cache(cfg))
    calls.update(ast=0, text=0)
    second = load_embeddings(build_embedding_cache(cfg))
    assert calls == {"ast": 0, "text": 0}
    torch.testing.assert_close(first.audio, second.audio, rtol=0, atol=0)
    torch.testing.assert_close(first.cond[0], second.cond[0], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"tokens": 2}, {"ast": N_CLIPS, "text": 0}),
        ({"clip_seconds": 0.5}, {"ast": N_CLIPS, "text": 0}),
        ({"template": "the sound of a {class}"}, {"ast": 0, "text": 2}),
        ({"classes": ["rooster"]}, {"ast": 0, "text": 0}),
    ],
)
def test_changed_setting_invalidates_what_it_affects(cfg, calls, change, expected) -> None:
    build_embedding_cache(cfg)
    calls.update(ast=0, text=0)
    data = load_embeddings(build_embedding_cache(replace(cfg, **change)))
    assert calls == expected
    assert data.audio.shape[1] == change.get("tokens", 4)


def test_changed_ast_model_invalidates_audio(cfg, calls, tmp_path) -> None:
    build_embedding_cache(cfg)
    calls.update(ast=0, text=0)
    other = build_tiny_ast(tmp_path / "other_ast", hidden_size=32)
    data = load_embeddings(build_embedding_cache(replace(cfg, ast_model=str(other))))
    assert calls == {"ast": N_CLIPS, "text": 0}
    assert data.audio.shape == (N_CLIPS, 4, 32)


def test_edited_wav_reencodes_only_that_clip(cfg, calls) -> None:
    before = load_embeddings(build_embedding_cache(cfg))
    edited = cfg.root / "audio" / before.sources[6]
    wave, rate = sf.read(edited)
    sf.write(edited, np.roll(wave, 4000, axis=0) * 0.5, rate)
    calls.update(ast=0, text=0)
    after = load_embeddings(build_embedding_cache(cfg))
    assert calls == {"ast": 1, "text": 0}
    changed = [i for i in range(N_CLIPS) if not torch.equal(before.audio[i], after.audio[i])]
    assert changed == [6]


def test_interrupted_build_resumes(cfg, calls, monkeypatch) -> None:
    reference = load_embeddings(build_embedding_cache(replace(cfg, cache_dir=cfg.cache_dir / "ref")))
    original = ASTModel.forward  # the counting wrapper
    state = {"batches": 0}

    def crash_after_two_batches(self, *args, **kwargs):
        if state["batches"] == 2:
            raise KeyboardInterrupt
        state["batches"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ASTModel, "forward", crash_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        build_embedding_cache(cfg)
    assert not list(cfg.cache_dir.rglob("*.tmp"))
    monkeypatch.setattr(ASTModel, "forward", original)
    calls.update(ast=0, text=0)
    resumed = load_embeddings(build_embedding_cache(cfg))
    assert calls["ast"] == N_CLIPS - 2 * cfg.batch_size
    torch.testing.assert_close(resumed.audio, reference.audio)


def test_flux_output_has_t5_states_and_pooled(cfg, models) -> None:
    out = build_embedding_cache(replace(cfg, text_pipeline=str(models["flux"]), max_sequence_length=8))
    data = load_embeddings(out)
    assert data.meta["family"] == "flux"
    assert [list(c.shape) for c in data.cond] == [[2, 8, 32], [2, 32]]


def test_nan_in_user_embeddings_names_file_and_sample(tmp_path) -> None:
    audio = torch.randn(3, 4, 8)
    audio[1, 2, 5] = float("nan")
    path = tmp_path / "user.safetensors"
    tensors = {"audio": audio, "label": torch.tensor([0, 1, 0]), "cond.0": torch.randn(2, 77, 16)}
    metadata = {
        "format": FORMAT,
        "classes": json.dumps(["dog", "rooster"]),
        "sources": json.dumps(["a", "b", "c"]),
    }
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(EmbeddingFileError, match=r"user\.safetensors.*sample 1 \(b\).*NaN"):
        load_embeddings(path)


def test_fingerprints_skip_hashing_only_stable_unchanged_files(tmp_path, monkeypatch) -> None:
    files = [tmp_path / f"{i}.wav" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 100)
        os.utime(f, ns=(10**18, 10**18))  # old file: its hash can be reused
    hashed = []
    original = cache._sha256_file
    monkeypatch.setattr(cache, "_sha256_file", lambda p: hashed.append(p.name) or original(p))
    store = tmp_path / "fingerprints.json"
    first = fingerprint_files(files, store)
    assert fingerprint_files(files, store) == first and hashed == ["0.wav", "1.wav", "2.wav"]
    files[1].write_bytes(b"x" * 100)  # same size, new mtime
    second = fingerprint_files(files, store)
    assert (
        hashed[3:] == ["1.wav"]
        and second[str(files[1].resolve())]["sha256"] != first[str(files[1].resolve())]["sha256"]
    )
    fingerprint_files(files, store)
    assert hashed[4:] == ["1.wav"]  # modified within RACY_NS of its hashing: hashed again
    fingerprint_files(files, store, rehash=True)
    assert len(hashed) == 8

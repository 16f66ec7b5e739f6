"""embed → fit → sample on a miniature ESC-50 with tiny AST and Stable Diffusion models from disk."""

from pathlib import Path

import pytest

from a2vgen.cli import main
from a2vgen.data.embeddings import load_embeddings
from tiny_models import build_tiny_ast, build_tiny_flux, build_tiny_sd, write_mini_esc50

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    return {
        "ast": str(build_tiny_ast(base / "ast")),
        "sd": str(build_tiny_sd(base / "sd")),
        "flux": str(build_tiny_flux(base / "flux")),
    }


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_embed_fit_sample_end_to_end(family, tmp_path, monkeypatch, models, caplog):
    monkeypatch.chdir(tmp_path)
    root = write_mini_esc50(tmp_path / "ESC-50", classes=("dog", "rooster"), clips_per_fold=2)
    embed = [
        "embed", "--embed.root", str(root), "--embed.output", "cache/esc.safetensors",
        "--embed.ast_model", models["ast"], "--embed.text_pipeline", models[family],
        "--embed.cache_dir", "cache/shards", "--embed.clip_seconds", "1.0", "--embed.progress", "false",
    ]  # fmt: skip
    main(embed)
    data = load_embeddings("cache/esc.safetensors")
    assert data.classes == ["dog", "rooster"] and data.audio.shape[1:] == (4, 64)
    assert len(data.cond) == (2 if family == "flux" else 1)  # FLUX: T5 states + pooled CLIP
    main(embed)  # second run: everything from the cache
    assert "0 to encode" in caplog.text or "cached" in caplog.text

    main([
        "fit", "--config", str(ROOT / "configs" / "sequential_classes_reset.yaml"),
        "--data.source", "a2vgen.data.sources.EmbeddingFile", "--data.source.path", "cache/esc.safetensors",
        "--data.clients", '[{id: "0", schedule: {1: [dog], 2: [dog, rooster]}}, {id: "1", classes: [rooster], schedule: null}]',
        "--trainer.max_rounds", "2", "--model.init_args.hidden_dim", "16", "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    (run,) = Path("runs/sequential_classes_reset").glob("version_*")
    ckpt = run / "checkpoints" / "last.ckpt"
    main(["sample", "--ckpt_path", str(ckpt), "--num_samples", "3", "--out", "s.safetensors"])
    samples = load_embeddings("s.safetensors")
    assert samples.audio.shape == (6, 4, 64)
    assert [c.shape[1:] for c in samples.cond] == [c.shape[1:] for c in data.cond]
    main(["sample", "--ckpt_path", str(ckpt), "--prompt", "a photo of a cat", "--pipeline", models[family],
          "--classes", "[dog]", "--num_samples", "2", "--out", "cat.safetensors"])  # fmt: skip
    cat = load_embeddings("cat.safetensors")
    assert cat.classes == ["a photo of a cat"] and cat.audio.shape == (2, 4, 64)

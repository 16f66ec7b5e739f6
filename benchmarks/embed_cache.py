"""Embedding cache: AST forward passes on a second build and during training rounds (target 0), and
``build_embedding_cache`` throughput (clips/s) with a full-size random-weight AST.

A mini ESC-50 (5 s clips at 44.1 kHz) is embedded with an AST of ``ASTConfig()`` size (12 layers, 768
wide, 1214 tokens; random weights, saved with ``save_pretrained``) and a tiny SD text encoder. Run 1
encodes every clip; run 2 (same settings) must find everything cached; then a 2-round federated fit on
the resulting embedding file must never run the AST. AST forwards are counted by wrapping
``ASTModel.forward``. Then the same clips through a bare batched AST forward loop (features computed
beforehand, model loaded beforehand) at the same batch size: run 1's encoding (model load excluded) must
reach >= 0.9x its clips/s, i.e. reading audio and extracting features overlap with the model. ``--smoke``
uses a tiny AST and 1 s clips.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import _common as c

OVERLAP_TARGET = 0.9
BATCH = 8


def bare_rate(embedder, waves: list) -> float:
    """Clips/s of a bare batched forward loop over ``waves`` (features extracted before timing)."""
    values = [embedder.features(waves[i : i + BATCH]) for i in range(0, len(waves), BATCH)]
    embedder.forward(values[0])  # warm-up
    start = time.perf_counter()
    for v in values:
        embedder.forward(v)
    return len(waves) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    args = c.parser(__doc__.splitlines()[0]).parse_args(argv)
    c.setup_torch()
    c.add_tests_to_path()
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    from a2vgen.data import cache
    from a2vgen.data.cache import EmbedConfig, build_embedding_cache
    from a2vgen.data.clients import ClientSpec
    from a2vgen.data.sources import EmbeddingFile
    from tiny_models import build_tiny_ast, build_tiny_sd, write_mini_esc50

    counts = {"ast_clips": 0, "ast_calls": 0}
    original_forward = ASTModel.forward

    def counting_forward(self, *a, **kw):
        first = a[0] if a else next(iter(kw.values()))
        counts["ast_clips"] += int(first.shape[0])
        counts["ast_calls"] += 1
        return original_forward(self, *a, **kw)

    encode_time = {"seconds": 0.0}
    original_encode = cache._encode_audio
    original_init = cache.ASTEmbedder.__init__

    def timed_init(self, *a, **kw):  # model loading is not part of the throughput
        start = time.perf_counter()
        original_init(self, *a, **kw)
        encode_time["seconds"] -= time.perf_counter() - start

    def timed_encode(*a, **kw):
        start = time.perf_counter()
        try:
            return original_encode(*a, **kw)
        finally:
            encode_time["seconds"] += time.perf_counter() - start

    seconds = 1.0 if args.smoke else 5.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = write_mini_esc50(
            tmp / "esc50", ["dog", "rooster"], clips_per_fold=1 if args.smoke else 3, seconds=seconds
        )
        if args.smoke:
            ast = build_tiny_ast(tmp / "ast")
            label = "tiny AST (hidden 64, 2 layers)"
        else:
            ast = tmp / "ast"
            model = ASTModel(ASTConfig()).eval()
            model.save_pretrained(ast)
            ASTFeatureExtractor().save_pretrained(ast)
            label = f"full-size AST, random weights ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M params)"
            del model
        sd = build_tiny_sd(tmp / "sd")
        cfg = EmbedConfig(
            root=root,
            ast_model=str(ast),
            text_pipeline=str(sd),
            clip_seconds=seconds,
            batch_size=BATCH,
            device="cpu",
            cache_dir=tmp / "cache",
            progress=False,
        )
        ASTModel.forward = counting_forward
        cache._encode_audio = timed_encode
        cache.ASTEmbedder.__init__ = timed_init
        try:
            for run in (1, 2):
                counts.update(ast_clips=0, ast_calls=0)
                encode_time["seconds"] = 0.0
                start = time.perf_counter()
                out = build_embedding_cache(cfg)
                total = time.perf_counter() - start
                n = len(EmbeddingFile(str(out)).load().labels)
                enc = encode_time["seconds"]
                rows.append(
                    [
                        f"build_embedding_cache run {run}",
                        n,
                        counts["ast_clips"],
                        counts["ast_calls"],
                        total,
                        n / total,
                        (counts["ast_clips"] / enc) if enc else "-",
                    ]  # fmt: skip
                )
            counts.update(ast_clips=0, ast_calls=0)
            source = EmbeddingFile(str(out))
            classes = source.load().classes
            dm = c.datamodule(
                source, [ClientSpec("0", classes=classes[:1]), ClientSpec("1", classes=classes[1:])], batch_size=4
            )
            module = c.module("UnifiedGenerator", dm, c.SMOKE_DIMS)
            trainer = c.trainer(str(tmp / "fit"), max_rounds=2, local_epochs=1, checkpoint=False)
            fit_s, samples = c.timed_fit(trainer, module, dm)
            rows.append(
                [
                    "federated fit, rounds 1-2 (cached file)",
                    samples,
                    counts["ast_clips"],
                    counts["ast_calls"],
                    fit_s,
                    "-",
                    "-",
                ]
            )
        finally:
            ASTModel.forward = original_forward
            cache._encode_audio = original_encode
            cache.ASTEmbedder.__init__ = original_init
        from a2vgen.data.esc50 import read_esc50
        from a2vgen.encoders.audio import ASTEmbedder, load_audio

        embedder = ASTEmbedder(str(ast), tokens=4, device="cpu", batch_size=BATCH)
        clips, _ = read_esc50(root, ["dog", "rooster"], None)
        waves = [load_audio(clip.path, embedder.sample_rate, seconds) for clip in clips]
        bare = bare_rate(embedder, waves)
        rows.append(["bare AST forward loop (features ready)", len(waves), len(waves), "-", "-", "-", bare])
    c.print_table(
        f"embed_cache: {label}, {seconds:g} s clips, batch {BATCH}, fp32, 2 threads (CPU)",
        [
            "step",
            "clips/samples",
            "AST clips forwarded",
            "AST calls",
            "seconds",
            "clips/s (total)",
            "clips/s (AST encode)",
        ],
        rows,
    )
    second, training = rows[1][2], rows[2][2]
    overlap = rows[0][6] / bare
    print(
        f"target run 1 AST encode >= {OVERLAP_TARGET}x bare loop: {overlap:.2f}x -> {c.verdict(overlap >= OVERLAP_TARGET)}"
    )
    print(f"target 0 AST forwards on run 2: {second} -> {c.verdict(second == 0)}")
    print(f"target 0 AST forwards in training rounds: {training} -> {c.verdict(training == 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

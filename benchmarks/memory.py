"""Memory: (a) generator state vs number of clients, shared vs independent; (b) peak RSS of a fit in
generator-only mode vs full mode with a Stable-Diffusion-1.5-sized pipeline.

(a) Bytes of parameters + optimizer state (Adam moments and steps) held after a fit of a unified generator
(small dims: hidden 256, latent 64, cond_width 64), counted over unique tensors; plus the same count scaled to
the default generator size. (b) One process per mode, ``resource.getrusage`` peak RSS: the same federated fit
(default generator, demo data) with ``generator_only=True``, and with ``generator_only=False,
pipeline=<dir>``, where ``<dir>`` is a StableDiffusionPipeline of SD-1.5 size (UNet2DConditionModel with the
SD-1.5 config, AutoencoderKL with the SD config, CLIPTextModel with the ViT-L/14 text config) built from
configs with random weights and saved with ``save_pretrained``; the full mode then renders one 64x64 image
in 2 steps. ``--smoke`` uses tiny configs and runs everything in this process (RSS then not isolated).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import _common as c

SMALL = {"hidden_dim": 256, "latent_dim": 64, "cond_width": 64}
CLIENTS = (1, 10, 50)


# ---------------------------------------------------------------------- (a) generator state
def state_bytes(trainer, module) -> tuple[int, int]:
    """Bytes of unique parameter tensors and of optimizer-state tensors across all banks/optimizers."""
    import torch

    gens = trainer.fit_loop.generators
    banks = [module.bank, *gens.banks().values()]
    if getattr(gens, "server_bank", None) is not None:
        banks.append(gens.server_bank)
    optimizers = list(trainer.optimizers) + list(getattr(gens, "optimizers", {}).values())
    if getattr(gens, "server_optimizers", None):
        optimizers += gens.server_optimizers
    seen: set[int] = set()
    params = 0
    for bank in banks:
        for p in bank.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params += p.numel() * p.element_size()
    opt_bytes = 0
    seen_opt: set[int] = set()
    for opt in optimizers:
        if id(opt) in seen_opt:
            continue
        seen_opt.add(id(opt))
        for state in opt.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    opt_bytes += v.numel() * v.element_size()
    return params, opt_bytes


def generator_memory(smoke: bool) -> list[list]:
    from a2vgen.data.clients import ClientSpec
    from a2vgen.nn.cvae import ConditionalVAE

    dims = c.SMOKE_DIMS if smoke else SMALL
    source = c.demo_source(smoke, 10, 10)
    classes = source.load().classes
    rows = []
    for n in CLIENTS:
        for shared in (True, False):
            clients = [ClientSpec(str(i), classes=[classes[i % 10]]) for i in range(n)] if n > 1 else None
            clients = clients or [ClientSpec("0", classes=classes)]
            dm = c.datamodule(source, clients, batch_size=8)
            module = c.module("UnifiedGenerator", dm, dims)
            with tempfile.TemporaryDirectory() as root:
                trainer = c.trainer(root, 1, 1, shared=shared, logging=False, checkpoint=False)
                trainer.fit(module, datamodule=dm)
            params, opt = state_bytes(trainer, module)
            small = sum(p.numel() for p in ConditionalVAE(dm.audio_shape, dm.cond_shapes, **dims).parameters())
            full = sum(
                p.numel() for p in ConditionalVAE(dm.audio_shape, dm.cond_shapes, **c.default_dims()).parameters()
            )
            scale = full / small
            rows.append(
                [n, "shared" if shared else "independent", params / 2**20, opt / 2**20, (params + opt) * scale / 2**20]
            )
    return rows


# ---------------------------------------------------------------------- (b) peak RSS
def build_sd15(path: str) -> None:
    """A StableDiffusionPipeline of SD-1.5 size with random weights (from configs, no download)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    c.add_tests_to_path()
    from tiny_models import _clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    tokenizer = _clip_tokenizer()
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            projection_dim=768,
            hidden_act="quick_gelu",
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)


def count_params(path: str) -> float:
    from safetensors import safe_open

    total = 0
    for sub in ("unet", "vae", "text_encoder"):
        folder = os.path.join(path, sub)
        for name in os.listdir(folder):
            if name.endswith(".safetensors"):
                with safe_open(os.path.join(folder, name), "pt") as f:
                    for key in f.keys():  # noqa: SIM118
                        total += _prod(f.get_slice(key).get_shape())
    return total / 1e6


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def run_contender(spec: dict) -> dict:
    import torch

    if spec["name"] == "build":
        start = time.perf_counter()
        if spec["smoke"]:
            c.add_tests_to_path()
            from tiny_models import build_tiny_sd

            build_tiny_sd(spec["pipeline"])
        else:
            build_sd15(spec["pipeline"])
        return {"seconds": time.perf_counter() - start}
    from a2vgen.data.clients import ClientSpec
    from a2vgen.data.demo import DEMO_CLASSES

    dims = c.SMOKE_DIMS if spec["smoke"] else c.default_dims()
    clients = [ClientSpec("0", classes=DEMO_CLASSES[:5]), ClientSpec("1", classes=DEMO_CLASSES[5:])]
    source = c.demo_source(spec["smoke"], 10, 8 if spec["smoke"] else 64)
    if spec["smoke"]:  # the data's conditioning must live in the pipeline's prompt space (tiny CLIP: 32 wide)
        source.kwargs["cond_dim"] = 32
    dm = c.datamodule(source, clients)
    module = c.module("UnifiedGenerator", dm, dims)
    full = spec["name"] == "full"
    extra = {"generator_only": not full, "pipeline": spec["pipeline"] if full else None}
    with tempfile.TemporaryDirectory() as root:
        trainer = c.trainer(root, 1, 1, checkpoint=False, **extra)
        seconds, _ = c.timed_fit(trainer, module, dm)
    out = {"fit_seconds": seconds, "gen_seconds": 0.0, "image": "-"}
    if full:
        pipe = trainer.server.pipeline()
        pipe.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        with torch.inference_mode():
            image = pipe("a dog barking", height=64, width=64, num_inference_steps=2, output_type="np").images[0]
        out["gen_seconds"] = time.perf_counter() - start
        out["image"] = "x".join(str(s) for s in image.shape)
    out["peak_rss_mib"] = c.peak_rss_mib()
    return out


def main(argv: list[str] | None = None) -> int:
    args = c.parser(__doc__.splitlines()[0]).parse_args(argv)
    if args.worker:
        return c.worker_main(run_contender, args.worker)
    inprocess = args.smoke or args.inprocess
    c.setup_torch()
    rows = generator_memory(args.smoke)
    c.print_table(
        "memory (a): generator parameters + optimizer state after a fit (unified; hidden 256, latent 64)",
        ["clients", "generators", "params MiB", "optimizer MiB", "total MiB at default size"],
        rows,
    )
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = os.path.join(tmp, "sd15")
        spec = {"smoke": args.smoke, "pipeline": pipeline}
        built = c.alternate(__file__, run_contender, [{**spec, "name": "build"}], 1, inprocess)["build"]
        mparams = count_params(pipeline)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(pipeline) for f in fs) / 2**30
        res = c.alternate(
            __file__, run_contender, [{**spec, "name": "generator-only"}, {**spec, "name": "full"}], 1, inprocess
        )
    label = "tiny SD (smoke)" if args.smoke else "SD-1.5-sized, random weights"
    print(
        f"\npipeline: {label}, {mparams:.1f} M parameters, {size:.2f} GiB on disk, built+saved in {built['seconds']:.1f} s"
    )
    rows = [
        [name, r["peak_rss_mib"], r["fit_seconds"], r["gen_seconds"], r["image"], "no" if inprocess else "yes"]
        for name, r in res.items()
    ]
    c.print_table(
        "memory (b): peak RSS of a federated fit (default generator), one process per mode",
        ["mode", "peak RSS MiB", "fit s (incl. load)", "64x64 2-step gen s", "image", "isolated"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

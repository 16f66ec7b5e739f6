"""The evaluation callback in small federated fits, and the report of a finished run."""

import json
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from a2vgen.callbacks import ClassChangeResetCallback, RoundCheckpoint
from a2vgen.callbacks.evaluation import GeneratorEvaluation
from a2vgen.data.clients import ClientSpec
from a2vgen.metrics.quality import evaluate_classes, features, fit_probe
from a2vgen.modules import PerClassGenerator
from a2vgen.report import read_training_log, report_command, reset_steps
from a2vgen.trainer import FederatedTrainer
from conftest import module_for, small_datamodule

CLIENTS = [
    ClientSpec("0", schedule={1: ["dog", "rain"], 3: ["dog", "rain", "rooster"]}),
    ClientSpec("1", classes=["sea_waves", "dog"]),
]


def fit(root, evaluation, max_rounds=3, ckpt_path=None, logger=None, clients=CLIENTS, **options):
    dm = small_datamodule(clients)
    module = module_for(PerClassGenerator, dm)
    trainer = FederatedTrainer(
        max_rounds=max_rounds,
        logger=logger or CSVLogger(str(root), name="run"),
        enable_progress_bar=False,
        callbacks=[ClassChangeResetCallback(), evaluation, RoundCheckpoint(every_n_rounds=1, keep_last=1)],
        **options,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, dm


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 3-round class-incremental run ('rooster' arrives in round 3), evaluated after rounds 2 and 3."""
    evaluation = GeneratorEvaluation(every_n_rounds=2, num_samples=16)
    trainer, dm = fit(tmp_path_factory.mktemp("runs"), evaluation)
    return trainer, dm, evaluation


def test_evaluation_json_has_per_class_scores_for_every_evaluated_round(run):
    trainer, _, _ = run
    content = json.loads(Path(trainer.log_dir, "evaluation.json").read_text())
    records = content["records"]
    assert [r["round"] for r in records] == [2, 3]  # every 2 rounds, plus the final round
    assert set(records[0]["per_class"]) == {"dog", "rain", "sea_waves"}  # rooster is not held before round 3
    assert set(records[1]["per_class"]) == {"dog", "rain", "sea_waves", "rooster"}
    for scores in records[1]["per_class"].values():
        for metric in (
            "fd_ratio", "centroid_fd_ratio", "diversity_ratio", "recall", "memorization_ratio",
            "synthetic_accuracy", "real_accuracy", "tstr_accuracy",
        ):  # fmt: skip
            assert math.isfinite(scores[metric])
    assert {"fd_ratio", "centroid_fd_ratio", "min_diversity_ratio", "probe_ratio"} <= set(records[1]["summary"])
    assert content["lead"][:2] == ["fd_ratio", "centroid_fd_ratio"]
    assert all(r["seconds"] > 0 and r["train_seconds"] > 0 for r in records)
    assert [p[0] for p in content["history"]["synthetic_accuracy"]["dog"]] == [2, 3]
    assert set(content["forgetting"]["synthetic_accuracy"]) == {"dog", "rain", "sea_waves", "rooster"}
    assert [(e["step"], e["round"], e["client"]) for e in content["losses"]] == [
        (0, 1, "0"), (1, 1, "1"), (2, 2, "0"), (3, 2, "1"), (4, 3, "0"), (5, 3, "1")
    ]  # fmt: skip
    assert (3, ["rooster"]) in [(e["round"], e["keys"]) for e in content["resets"]]
    assert content["pca"]["round"] == 3
    for points in content["pca"]["classes"].values():
        assert len(points["real"]) == 4 and len(points["synthetic"]) == 16 and len(points["real"][0]) == 2


def test_final_scores_match_evaluate_classes_with_a_probe_on_all_training_clips(run):
    trainer, dm, evaluation = run
    data, module = dm.data, trainer.lightning_module
    real = {c: data.audio[evaluation.real_indices[c]] for c in data.classes if c in evaluation.records[-1]["per_class"]}
    train_idx = data.split_indices("train")
    train = {c: data.audio[train_idx[data.labels[train_idx] == i]] for i, c in enumerate(data.classes)}
    probe = fit_probe({c: features(x) for c, x in train.items()}, {c: i for i, c in enumerate(data.classes)})
    gen = torch.Generator().manual_seed(0)
    sample = lambda c, n: module.sample(c, n, generator=gen)  # noqa: E731
    expected = evaluate_classes(train, real, sample, 16, probe=probe, label_order=data.classes)
    got = evaluation.records[-1]["per_class"]
    for cls, scores in expected.items():
        for metric, value in scores.items():
            assert got[cls][metric] == pytest.approx(value, rel=1e-6), (cls, metric)


def test_metrics_reach_the_csv_logger(run):
    trainer, _, _ = run
    with open(f"{trainer.log_dir}/metrics.csv") as f:
        header = f.readline().strip().split(",")
        rows = f.readlines()
    for column in ("eval/synthetic_accuracy/dog", "eval/diversity_ratio/rooster", "eval/fd_ratio", "eval/seconds"):
        assert column in header
    col = header.index("eval/centroid_fd_ratio")
    assert len([r for r in rows if r.split(",")[col]]) == 2


def test_real_set_is_the_pooled_held_out_split_never_training_samples(run):
    _, dm, evaluation = run
    data = dm.data
    val, train = data.split_indices("val"), set(data.split_indices("train").tolist())
    pooled = torch.cat([dm.client(spec.id).indices["val"] for spec in dm.clients]).unique()
    for cls, indices in evaluation.real_indices.items():
        expected = val[data.labels[val] == data.classes.index(cls)]
        assert torch.equal(indices, expected)
        assert set(indices.tolist()) <= set(pooled.tolist())
        assert not set(indices.tolist()) & train


def test_history_survives_resume_from_checkpoint(run, tmp_path):
    trainer, _, evaluation = run
    resumed = GeneratorEvaluation(every_n_rounds=2, num_samples=16)
    again, _ = fit(tmp_path, resumed, max_rounds=4, ckpt_path=f"{trainer.log_dir}/checkpoints/last.ckpt")
    assert [r["round"] for r in resumed.records] == [2, 3, 4]
    assert resumed.records[:2] == evaluation.records
    assert len(resumed.history()["synthetic_accuracy"]["rooster"]) == 2
    content = json.loads(Path(again.log_dir, "evaluation.json").read_text())
    assert [r["round"] for r in content["records"]] == [2, 3, 4]


def test_independent_generators_are_scored_per_client(tmp_path):
    evaluation = GeneratorEvaluation(num_samples=8)
    fit(tmp_path, evaluation, max_rounds=1, shared_generators=False)
    assert set(evaluation.records[0]["per_class"]) == {"dog@0", "rain@0", "sea_waves@1", "dog@1"}
    assert {"fd_ratio@0", "fd_ratio@1"} <= set(evaluation.records[0]["summary"])


class SpyWandbLogger(WandbLogger):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tables, self.images = [], []

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.tables.append((key, columns, data))
        super().log_table(key, columns, data, dataframe, step)

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images))
        super().log_image(key, images, step, **kwargs)


def test_wandb_gets_a_per_class_table_and_the_plots(tmp_path):
    logger = SpyWandbLogger(save_dir=str(tmp_path), offline=True, project="a2vgen-test")
    fit(tmp_path, GeneratorEvaluation(num_samples=8), max_rounds=1, logger=logger)
    logger.experiment.finish()
    ((key, columns, data),) = logger.tables
    assert key == "eval/per_class" and columns[0] == "class" and "synthetic_accuracy" in columns
    assert sorted(row[0] for row in data) == ["dog", "rain", "sea_waves"]
    assert {key for key, _ in logger.images} == {"eval/plots/losses", "eval/plots/synthetic_accuracy", "eval/plots/pca"}
    assert all(images[0].ndim == 3 and images[0].shape[2] == 3 for _, images in logger.images)


def test_report_writes_plots_and_a_page_that_shows_them(run, tmp_path):
    trainer, _, _ = run
    visits, resets = read_training_log(f"{trainer.log_dir}/metrics.csv")
    assert [(v["step"], v["round"], v["client"]) for v in visits] == [(i, 1 + i // 2, str(i % 2)) for i in range(6)]
    assert set(visits[4]["losses"]) == {"dog", "rain", "rooster"}
    assert (4, "rooster") in resets and (0, "dog") in resets
    content = json.loads(Path(trainer.log_dir, "evaluation.json").read_text())
    assert sorted(reset_steps(content["losses"], content["resets"])) == sorted(resets)  # the callback's copy agrees
    report_command([trainer.log_dir, "--out", str(tmp_path / "report")])
    page = (tmp_path / "report" / "report.html").read_text()
    for name in ("losses.png", "pca.png", "heatmap_synthetic_accuracy.png", "heatmap_fd_ratio.png"):
        png = tmp_path / "report" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
        assert f'src="{name}"' in page
    assert "rooster" in page and "centroid_fd_ratio" in page and "seen classes" in page

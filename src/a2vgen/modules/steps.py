"""Training, evaluation and prediction steps: the Lightning-steps half of
:class:`~a2vgen.modules.base.BaseGeneratorModule`."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext

import torch

from a2vgen.batch import Batch, sample_cond, subset_cond
from a2vgen.lightning_adapter import attached_trainer
from a2vgen.modules.bank import ADAPTER_KEY, GeneratorBank
from a2vgen.nn.calibration import SamplingCalibration


def key_groups(slot_idx: torch.Tensor) -> list[tuple[int, slice | torch.Tensor | None]]:
    """``(slot, selection)`` of every slot in a batch, in the order the slots first appear: ``None`` when the
    whole batch belongs to one slot, a ``slice`` when each slot's samples are one run (a key-grouped batch:
    its samples are views, not copies), else a boolean mask."""
    first = int(slot_idx[0])
    if bool((slot_idx == first).all()):
        return [(first, None)]
    runs, counts = torch.unique_consecutive(slot_idx, return_counts=True)
    runs, counts = runs.tolist(), counts.tolist()
    if len(set(runs)) == len(runs):
        ends = list(itertools.accumulate(counts))
        return [(s, slice(end - n, end)) for s, n, end in zip(runs, counts, ends)]
    return [(s, slot_idx == s) for s in dict.fromkeys(slot_idx.tolist())]


class GeneratorSteps:
    """One batch through its generators (:meth:`shared_step`), per-visit loss statistics, per-generator
    gradient clipping, the AdamW optimizer, and the val/test/predict steps.

    A mixin of :class:`~a2vgen.modules.base.BaseGeneratorModule` (it calls ``compute_loss`` per generator).
    """

    @contextmanager
    def local_training(self, keys: Iterable[str], stack: bool = True) -> Iterator[bool]:
        """A client visit's local epochs on the generators of ``keys``: stacked where ``stack`` and possible
        (:meth:`~a2vgen.modules.stacked_steps.StackedSteps.stacking`; yields whether any were), and a
        calibration's batch that comes again in later epochs pooled once with its count, on exit
        (:meth:`~a2vgen.nn.calibration.SamplingCalibration.repeats`: the same statistics)."""
        with SamplingCalibration.repeats(), self.stacking(keys) if stack else nullcontext(False) as stacked:
            yield stacked

    def _check_shapes(self, batch: Batch) -> None:
        audio, cond = batch["audio"], batch["cond"]
        if list(audio.shape[1:]) != self.audio_shape:
            raise ValueError(f"audio embeddings have shape {list(audio.shape[1:])}, module expects {self.audio_shape}")
        if [list(c.shape[1:]) for c in cond] != self.cond_shapes:
            raise ValueError(
                f"conditioning shapes {[list(c.shape[1:]) for c in cond]} do not match the module's {self.cond_shapes}"
            )

    def _check_finite(self, batch: Batch) -> None:
        """Name the first sample with NaN/Inf input (called when a loss is not finite: checking every
        batch would cost ~7% of a step, and data sources already validate what they load)."""
        audio, cond = batch["audio"], sample_cond(batch)
        for name, tensor in [("audio", audio), *((f"cond.{i}", c) for i, c in enumerate(cond))]:
            finite = torch.isfinite(tensor.flatten(1)).all(dim=1)
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0])
                sample = int(batch["index"][bad]) if "index" in batch else bad
                raise ValueError(
                    f"NaN/Inf in '{name}' of sample {sample} (class '{self.classes[int(batch['class_idx'][bad])]}')"
                )

    def shared_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        """Sum over keys of each key's mean loss, and per-key sums of the loss parts.

        Each key's samples go through its own generator, keys in the order they first appear in the batch;
        while :meth:`~a2vgen.modules.stacked_steps.StackedSteps.stacking`, keys of one stack with as many
        samples and conditioning rows run as one vmapped step."""
        self._check_shapes(batch)
        audio, class_idx = batch["audio"], batch["class_idx"]
        slot_idx = self.bank.slot_of_class[class_idx]
        if bool((slot_idx < 0).any()):
            missing = sorted({self.classes[int(c)] for c in class_idx[slot_idx < 0]})
            raise ValueError(f"classes {missing} have no generator in the current bank {self.bank.keys}")
        groups = key_groups(slot_idx)
        inputs = []
        for s, mask in groups:
            cond, cond_index = subset_cond(batch, mask)
            if mask is not None and cond_index is not None:  # keep only this key's conditioning rows
                rows, cond_index = cond_index.unique(return_inverse=True)
                cond = [c.index_select(0, rows) for c in cond]
            inputs.append((self.bank.slots[s], audio if mask is None else audio[mask], cond, cond_index))
        losses = self.stacked_losses(inputs) if self._stacks and self.training else [None] * len(inputs)
        total = audio.new_zeros(())
        stats: dict[str, dict[str, torch.Tensor]] = {}
        for (s, mask), (slot, a, c, ci), parts in zip(groups, inputs, losses):
            key = self.bank.keys[s]
            if parts is None:
                parts = self.compute_loss(slot.net, a, c, slot.age, ci)
            if "loss" not in parts or "samples" in parts:
                raise KeyError(
                    f"{type(self).__name__}.compute_loss must return per-sample parts with 'loss' (and none named "
                    f"'samples'), got {sorted(parts)} for generator {key!r}"
                )
            total = total + parts["loss"].mean()
            stats[key] = {name: part.detach().sum() for name, part in parts.items()}
            stats[key]["samples"] = torch.tensor(float(a.shape[0]))
            if self.training:
                slot.seen[class_idx if mask is None else class_idx[mask]] = True
        if self.bank.adapter is not None:
            cond = sample_cond(batch)
            mse = sum((p - t).pow(2).flatten(1).mean(dim=1) for p, t in zip(self.bank.adapter(audio), cond)) / len(cond)
            total = total + self.hparams.adapter_weight * mse.mean()
            stats[ADAPTER_KEY] = {"loss": mse.detach().sum(), "samples": torch.tensor(float(audio.shape[0]))}
        if not bool(torch.isfinite(total.detach())):
            self._check_finite(batch)
            raise FloatingPointError(f"non-finite loss {float(total)} on finite inputs: lower the learning rate?")
        return total, stats

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, stats = self.shared_step(batch)
        self._stepped_keys = list(stats)
        for key, values in stats.items():
            acc = self._visit_stats.setdefault(key, {})
            for name, value in values.items():
                value = value.to(loss.device)
                acc[name] = acc[name] + value if name in acc else value
        trainer = attached_trainer(self)
        if trainer is not None and trainer.progress_bar_callback is not None:  # ~1 ms a step: only for a bar
            self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._epoch_keys.update(self._stepped_keys)

    def on_train_epoch_end(self) -> None:
        """Age every generator that trained in this local epoch (drives its loss schedule)."""
        for key in self._epoch_keys - {ADAPTER_KEY}:
            self.bank[key].age += 1
        self._epoch_keys.clear()

    def pop_visit_stats(self) -> dict[str, dict[str, float]]:
        """Mean of every loss part, and the sample count, per key since the last call (one client visit)."""
        out = {}
        for key, acc in self._visit_stats.items():
            values = dict(zip(acc, torch.stack(list(acc.values())).tolist()))
            n = max(values["samples"], 1.0)
            out[key] = {k: (v if k == "samples" else v / n) for k, v in values.items()}
        self._visit_stats = {}
        return out

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip each generator's gradient norm on its own, so keys sharing a batch do not interact."""
        clip = self.hparams.grad_clip
        if not clip:
            return
        clipped = set()
        for stack in {stack for stack, _ in self._stacks.values()}:
            clipped.update(id(stack.nets[k]) for k in stack.clip_positions)
            stack.clip_grads(clip)
        for key in self._stepped_keys:
            module = self.bank.adapter if key == ADAPTER_KEY else self.bank[key]
            if key != ADAPTER_KEY and id(module.net) in clipped:
                continue
            params = [p for p in module.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            # on CPU the comparison costs nothing and skips a pass over the gradients when within the limit
            if norm.device.type != "cpu" or norm > clip:
                torch.nn.utils.clip_grads_with_norm_(params, clip, norm)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.build_optimizer(self.bank)

    def build_optimizer(self, bank: GeneratorBank) -> torch.optim.Optimizer:
        """AdamW over ``bank`` (fused where the device supports it: ~2x faster on CPU)."""
        params = list(bank.parameters())
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Batch, stage: str, dataloader_idx: int = 0) -> torch.Tensor:
        loss, stats = self.shared_step(batch)
        n = batch["audio"].shape[0]
        for key, values in stats.items():
            count = float(values.pop("samples"))
            for part, value in values.items():
                self.log(
                    f"{stage}/{key}/{part}",
                    value / count,
                    batch_size=int(count),
                    add_dataloader_idx=True,
                )
        self.log(f"{stage}/loss", loss, batch_size=n, prog_bar=True, add_dataloader_idx=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, "test", dataloader_idx)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Sample one batch of requests (``class_idx`` and ``cond`` per sample) from their generators."""
        class_idx = batch["class_idx"]
        slot_idx = self.bank.slot_of_class[class_idx]
        audio = torch.empty(len(class_idx), *self.audio_shape, device=class_idx.device)
        for s in slot_idx.unique().tolist():
            mask = slot_idx == s
            cond, cond_index = subset_cond(batch, mask)
            audio[mask] = self.bank.slots[s].net.sample(int(mask.sum()), cond, cond_index=cond_index)
        return {"audio": audio, "class_idx": class_idx}

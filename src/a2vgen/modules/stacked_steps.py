"""Stacked training: a client visit's generators of one network structure run as one vmapped step per batch,
the stacked-training half of :class:`~a2vgen.modules.base.BaseGeneratorModule`'s steps."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from a2vgen.modules.bank import GeneratorSlot
from a2vgen.modules.stacking import StackedNetworks, structure, unstack
from a2vgen.nn.calibration import SamplingCalibration

log = logging.getLogger(__name__)

GroupInput = tuple[GeneratorSlot, torch.Tensor, list[torch.Tensor], "torch.Tensor | None"]


class StackedSteps:
    """Stacks a visit's generators (:meth:`stacking`), computes a batch's losses with one batched forward and,
    where the module keeps the base loss, one batched loss per stack (:meth:`stacked_losses`, called by
    ``shared_step``) and hands the stacked gradients out per generator (:meth:`backward`), so clipping and
    AdamW see each generator as when trained apart.

    A mixin of :class:`~a2vgen.modules.base.BaseGeneratorModule` (``_stacks`` maps each stacked network to
    its stack and position).
    """

    def supports_stacking(self) -> bool:
        """Whether this module's generators can train stacked: the loss is the base module's
        (:meth:`draw_noise`, the network's forward, :meth:`loss_parts`) and there is no adapter, whose
        batches would change. A module overriding ``compute_loss`` trains its generators one at a time."""
        from a2vgen.modules.base import BaseGeneratorModule

        return type(self).compute_loss is BaseGeneratorModule.compute_loss and self.bank.adapter is None

    @contextmanager
    def stacking(self, keys: Iterable[str]) -> Iterator[bool]:
        """Within this context, the generators of ``keys`` in the current bank that share a network
        structure are stacked (:class:`~a2vgen.modules.stacking.StackedNetworks`) and train as one vmapped
        step per batch; yields whether any were. Results equal training them apart, batch for batch, up
        to floating-point rounding. On exit every parameter has its own storage again."""
        by_structure: dict[tuple, list[nn.Module]] = defaultdict(list)
        if self.supports_stacking():
            for key in keys:
                if key in self.bank:
                    net = self.bank[key].net
                    by_structure[structure(net)].append(net)
        stacks = [StackedNetworks(nets) for nets in by_structure.values() if len(nets) > 1]
        self._stacks = {net: (stack, k) for stack in stacks for k, net in enumerate(stack.nets)}
        self._free_params = self.free_parameters()
        try:
            yield bool(stacks)
        finally:
            for stack in stacks:
                stack.release()
            self._stacks, self._free_params, self._ran_apart = {}, [], []

    def free_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of this module outside the current bank's generator networks (collected
        when stacking starts: :meth:`backward` differentiates them and the networks that ran apart, not every
        parameter of every generator)."""
        nets = {id(slot.net) for slot in self.bank.slots}
        found: list[nn.Parameter] = []

        def walk(module: nn.Module) -> None:  # not into the networks: 50 generators hold thousands of tensors
            found.extend(p for p in module.parameters(recurse=False) if p.requires_grad)
            for child in module.children():
                if id(child) not in nets:
                    walk(child)

        walk(self)
        return list(dict.fromkeys(found))  # a parameter registered twice is differentiated once

    def stacked_losses(self, inputs: list[GroupInput]) -> list[dict[str, torch.Tensor]]:
        """The loss parts of every group (see :meth:`compute_loss`): groups whose generators are stacked
        together and hold as many samples and conditioning rows run one vmapped forward; the others run
        their own. Random inputs are drawn in batch order and calibrations update together."""
        for stack in {stack for stack, _ in self._stacks.values()}:
            if not stack.valid():  # e.g. a load with assign=True gave a parameter new storage
                log.warning("a stacked generator's parameters were replaced: its stack trains apart from now on")
                stack.release()
                self._stacks = {net: entry for net, entry in self._stacks.items() if entry[0] is not stack}
        sets: dict[tuple, list[int]] = defaultdict(list)
        for i, (slot, a, c, ci) in enumerate(inputs):
            entry = self._stacks.get(slot.net)
            if entry is not None:
                sets[(id(entry[0]), a.shape[0], c[0].shape[0] if c else 0, ci is None)].append(i)
        stacked_sets = [members for members in sets.values() if len(members) > 1]
        for members in stacked_sets:  # the stack's order: no reindexing
            members.sort(key=lambda i: self._stacks[inputs[i][0].net][1])
        audios = [torch.stack([inputs[i][1] for i in members]) for members in stacked_sets]
        noise: dict[int, dict[str, torch.Tensor]] = {}
        drawn = None  # the whole batch is one stack's: its random inputs drawn straight into stacked tensors
        if len(stacked_sets) == 1 and len(stacked_sets[0]) == len(inputs):
            members = stacked_sets[0]
            order = sorted(range(len(members)), key=members.__getitem__)  # batch order, as apart
            drawn = self.draw_stacked_noise([inputs[i][0].net for i in members], audios[0], order)
        if drawn is None:
            for i, (slot, a, _, _) in enumerate(inputs):  # random inputs drawn in batch order, as apart
                noise[i] = self.draw_noise(slot.net, a)
        stacked_outputs: list[tuple[list[int], tuple]] = []
        for members, audio in zip(stacked_sets, audios):
            stack = self._stacks[inputs[members[0]][0].net][0]
            positions = [self._stacks[inputs[i][0].net][1] for i in members]
            stacked = [torch.stack(t) for t in zip(*(inputs[i][2] for i in members))]
            if drawn is not None:
                kwargs = dict(drawn)
            else:
                kwargs = {name: torch.stack([noise[i][name] for i in members]) for name in noise[members[0]]}
            if inputs[members[0]][3] is not None:
                kwargs["cond_index"] = torch.stack([inputs[i][3] for i in members])
            stacked_outputs.append((members, stack(positions, (audio, stacked), kwargs)))
        ran_stacked = {i for members, _ in stacked_outputs for i in members}
        self._ran_apart = [slot.net for i, (slot, _, _, _) in enumerate(inputs) if i not in ran_stacked]
        parts: dict[int, dict[str, torch.Tensor]] = {}
        unstacked: dict[int, tuple] = {}  # outputs of stacked generators scored one by one
        with SamplingCalibration.deferred():  # the calibrations of a stack update as one batch
            for members, output in stacked_outputs:  # one batched loss per stack, where the loss allows
                scored = self.stacked_loss_parts([inputs[i] for i in members], output)
                if scored is None:
                    unstacked.update(zip(members, unstack(output, len(members))))
                else:
                    parts.update(zip(members, scored))
            for i, (slot, a, c, ci) in enumerate(inputs):  # the rest in batch order
                if i not in parts:
                    output = unstacked[i] if i in unstacked else slot.net(a, c, cond_index=ci, **noise[i])
                    parts[i] = self.loss_parts(slot.net, output, a, c, slot.age, ci)
        return [parts[i] for i in range(len(inputs))]

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        """While stacking: the gradients of the stacked weights and of every other parameter in one
        ``torch.autograd.grad`` call, each stacked generator's handed to its parameters as slices. (Plain
        ``backward`` would copy each stacked gradient once more as it stores it: ~10 % of a step.)"""
        stacks = list(dict.fromkeys(stack for stack, _ in self._stacks.values()))
        if not stacks or args or kwargs or not torch.is_grad_enabled():
            return super().backward(loss, *args, **kwargs)
        stacked = [(stack, name, tensor) for stack in stacks for name, tensor in stack.params.items()]
        # the generators this step ran apart (a stacked one too, when alone in its set) and what is not a generator
        apart = dict.fromkeys(p for net in self._ran_apart for p in net.parameters() if p.requires_grad)
        others = list(apart) + [p for p in self._free_params if p not in apart]
        inputs = [tensor for _, _, tensor in stacked] + others
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        per_stack: dict[StackedNetworks, dict] = {stack: {} for stack in stacks}
        for (stack, name, _), grad in zip(stacked, grads):
            per_stack[stack][name] = grad
        for stack, named in per_stack.items():
            stack.distribute_grads(named)
        for p, grad in zip(others, grads[len(stacked) :]):
            if grad is not None:
                p.grad = grad if p.grad is None else p.grad + grad

    def on_after_backward(self) -> None:
        """Stacked generators whose loss was differentiated by plain ``backward``: each parameter gets its
        slice of the stacked gradient."""
        for stack in {stack for stack, _ in self._stacks.values()}:
            stack.distribute_grads()

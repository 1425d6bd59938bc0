"""Copies of models that a trainer has patched.

TRL's trainers patch ``model.forward`` on the instance (``trl.trainer.utils.add_fused_lm_head``): the new forward is
a closure over the model's *previous bound* forward. ``copy.deepcopy`` copies functions by identity, so the copy's
forward still closes over the original model's: every call that does not take the fused path (generation, plain
forward passes) runs the **original** model's weights while the copy's own weights train. [`clone_model`] copies a
model and gives such modules their class forward back (a trainer patches its own copy again when it is built).
"""

from __future__ import annotations

import copy
import types

import torch

__all__ = ["clone_model"]


def _foreign_owner(fn, own: set[int], depth: int = 0) -> bool:
    """Whether ``fn`` (a bound method or function) closes, directly or through closures it holds, over a method
    bound to a module outside ``own``."""
    if depth > 8:
        return False
    func = getattr(fn, "__func__", fn)
    for cell in getattr(func, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        owner = getattr(value, "__self__", None)
        if isinstance(owner, torch.nn.Module) and id(owner) not in own:
            return True
        if isinstance(value, (types.FunctionType, types.MethodType)) and _foreign_owner(value, own, depth + 1):
            return True
    return False


def clone_model(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` whose forward passes run the copy's own weights.

    Like ``copy.deepcopy``, except that a module whose instance-level ``forward`` closes over a method of a module
    outside the copy (a patch made on the original, e.g. TRL's fused LM head after an ``SFTTrainer`` or
    ``DPOTrainer`` run in the same process) gets its class ``forward`` back. Patches that only refer to the copy
    itself are kept.

    Args:
        model (`torch.nn.Module`): the model to copy (left untouched).

    Returns:
        `torch.nn.Module`: the copy.
    """
    clone = copy.deepcopy(model)
    own = {id(m) for m in clone.modules()}
    for module in clone.modules():
        patched = vars(module).get("forward")
        if patched is not None and _foreign_owner(patched, own):
            del module.forward  # back to type(module).forward
    return clone

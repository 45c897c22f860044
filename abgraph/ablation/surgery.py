"""Model surgery for layer and feature ablation: remove layers, then repair shapes.

PyTorch layers state their input size, so removing one usually breaks the next
(thesis Section 3.2.2). We repair the way Maggy does: push one example batch
through the ablated model and rebuild, with fresh parameters, each parametric
layer whose input no longer fits. Without an example batch we can still repair
plain stacks (an MLP like the thesis' Listing 4.1) by following feature widths
through `nn.Sequential` containers.

Everything works on a deep copy: callers branch many trials off one base model.
"""
from __future__ import annotations

import copy
import difflib
import logging
import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules import activation as _activation_module
from torch.nn.modules.lazy import LazyModuleMixin

from abgraph.ablation.errors import AblationError

__all__ = ["Prefix", "ablate_layers", "list_layers", "repair_input_layer"]

log = logging.getLogger(__name__)

# Activations are what `with_activation` removes along with a layer. Attention is
# defined in the same torch module but is a layer, not an activation.
ACTIVATIONS = tuple(
    cls for cls in vars(_activation_module).values()
    if isinstance(cls, type) and issubclass(cls, nn.Module)
    and cls.__module__ == _activation_module.__name__ and cls is not nn.MultiheadAttention
)
_SAME_WIDTH = tuple(c for c in ACTIVATIONS if c is not nn.GLU) + (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.FeatureAlphaDropout)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_WIDTH_CHANGERS = (nn.Linear,) + _CONVS      # layers that set a new width
_REPAIRABLE = _WIDTH_CHANGERS + _BATCHNORMS + (nn.LayerNorm,)


@dataclass(frozen=True)
class Prefix:
    """Target every module whose dotted name starts with `prefix`."""
    prefix: str


def list_layers(model: nn.Module) -> list[str]:
    """Names `ablate_layers` accepts, in module order (Sequential children are named by index)."""
    return [name for name, _ in model.named_modules() if name]


def ablate_layers(model: nn.Module, targets=None, example_input=None,
                  with_activation: bool = False, prefix: str | None = None) -> nn.Module:
    """Return a copy of `model` without `targets`, with the layers after them repaired.

    targets: an index (top-level Sequential), a dotted module name, a `Prefix`,
        or a list of those removed together; `prefix="x"` is `Prefix("x")`.
    Inside an `nn.Sequential` a target is deleted (and, with `with_activation`,
    the activation right after it); elsewhere it is replaced by `nn.Identity`.
    example_input: a tensor, a tuple of positional inputs or a dict of keyword
        inputs; when given, one dry run finds and rebuilds every layer whose input
        no longer fits, and the output shape must stay the same. Without it only
        width changes inside Sequential stacks can be repaired.
    Raises AblationError when the removal cannot be resolved or repaired.
    """
    new = copy.deepcopy(model)
    names = _resolve_targets(new, _as_list(targets, prefix))
    if with_activation:
        names = _topmost(names + _activations_after(new, names))
    modules_before = dict(new.named_modules())   # keeps Sequential objects reachable by old name
    expected = None
    if example_input is not None:
        expected = _shapes(_dry_run(
            new, example_input, None,
            f"example_input {_shapes(example_input)} does not run through the original model"))
    for name in names:
        log.info("ablating %s - %r", name, modules_before[name])
    _remove(new, names, modules_before)
    if example_input is not None:
        _repair_by_dry_run(new, example_input, f"removing {names}", expected=expected)
    else:
        _repair_by_widths(model, names, modules_before)
    return new


def repair_input_layer(model: nn.Module, example_input) -> nn.Module:
    """Return a copy of `model` whose input layer fits a new input (after feature ablation).

    The first Linear/Conv reached (and any BatchNorm/LayerNorm before it) is rebuilt
    for the feature/channel size of `example_input`. An int is taken as that size
    and applied to the first such layer in registration order. Later layers are not
    touched: if they would need rebuilding too, AblationError says which.
    """
    new = copy.deepcopy(model)
    if isinstance(example_input, numbers.Integral) and not isinstance(example_input, bool):
        _repair_first_layers(new, int(example_input))
    else:
        _repair_by_dry_run(new, example_input, f"the new input {_shapes(example_input)}",
                           input_only=True)
    return new


# --- targets ---------------------------------------------------------------

def _as_list(targets, prefix):
    items = list(targets) if isinstance(targets, (list, tuple, set, frozenset)) else (
        [] if targets is None else [targets])
    if prefix is not None:
        items.append(Prefix(prefix))
    if not items:
        raise AblationError("nothing to ablate: give targets or prefix")
    return items


def _resolve_targets(model, items):
    names = []
    for item in items:
        if isinstance(item, Prefix):
            names += _resolve_prefix(model, item.prefix)
        elif isinstance(item, numbers.Integral) and not isinstance(item, bool):
            names.append(_resolve_index(model, int(item)))
        elif isinstance(item, str):
            names.append(_resolve_name(model, item))
        else:
            raise AblationError(f"cannot ablate {item!r} ({type(item).__name__}): a target is an "
                                "int index, a module name, a Prefix, or a list of those")
    return _topmost(names)


def _resolve_index(model, index):
    if not isinstance(model, nn.Sequential):
        raise AblationError(f"integer target {index} needs an nn.Sequential model, got "
                            f"{type(model).__name__}; use a name: {list_layers(model)}")
    keys = list(model._modules)
    if not -len(keys) <= index < len(keys):
        raise AblationError(f"layer index {index} out of range: the model has {len(keys)} "
                            f"layers (0..{len(keys) - 1})")
    return keys[index]


def _resolve_name(model, name):
    """Walk the dotted name; a numeric part may also be a position in a Sequential."""
    module, parts = model, []
    for part in name.split("."):
        children = module._modules
        if children.get(part) is not None:
            key = part
        elif isinstance(module, nn.Sequential) and part.isdigit() and int(part) < len(children):
            key = list(children)[int(part)]
        else:
            raise _unknown(model, name)
        parts.append(key)
        module = children[key]
    return ".".join(parts)


def _resolve_prefix(model, prefix):
    if not prefix:
        raise AblationError("an empty prefix would remove the whole model")
    names = [n for n in list_layers(model) if n.startswith(prefix)]
    if not names:
        raise _unknown(model, prefix, what="no layer name starts with")
    return names


def _unknown(model, name, what="unknown layer"):
    valid = list_layers(model)
    close = difflib.get_close_matches(name, valid, n=5)
    hint = f"; did you mean {close}?" if close else ""
    return AblationError(f"{what} {name!r} in {type(model).__name__}{hint} valid names: {valid}")


def _topmost(names):
    """Deduplicate, dropping names inside another target (removing the parent removes them)."""
    names = list(dict.fromkeys(names))
    return [n for n in names if not any(n.startswith(m + ".") for m in names)]


def _split(name):
    parent, _, key = name.rpartition(".")
    return parent, key


def _activations_after(model, names):
    found = []
    for name in names:
        parent_name, key = _split(name)
        parent = model.get_submodule(parent_name)
        if not isinstance(parent, nn.Sequential) or isinstance(parent._modules[key], ACTIVATIONS):
            continue
        keys = list(parent._modules)
        following = keys.index(key) + 1
        if following < len(keys) and isinstance(parent._modules[keys[following]], ACTIVATIONS):
            found.append(f"{parent_name}.{keys[following]}" if parent_name else keys[following])
    return found


# --- removal ---------------------------------------------------------------

def _remove(model, names, modules):
    """Delete from Sequentials (renumbering index-named ones), replace by Identity elsewhere."""
    by_parent = {}
    for name in names:
        parent_name, key = _split(name)
        by_parent.setdefault(parent_name, set()).add(key)
    for parent_name, keys in by_parent.items():
        parent = modules[parent_name]
        if not isinstance(parent, nn.Sequential):
            for key in keys:
                setattr(parent, key, nn.Identity())
            continue
        numbered = list(parent._modules) == [str(i) for i in range(len(parent._modules))]
        kept = [(k, m) for k, m in parent._modules.items() if k not in keys]
        parent._modules.clear()
        for i, (key, module) in enumerate(kept):
            parent._modules[str(i) if numbered else key] = module


# --- repair by dry run -------------------------------------------------------

class _Mismatch(Exception):
    """Raised from a hook to stop the dry run at a layer that needs rebuilding."""

    def __init__(self, name, layer, size):
        super().__init__(name)
        self.name, self.layer, self.size = name, layer, size


def _repair_by_dry_run(model, example_input, context, expected=None, input_only=False):
    """Run forward, rebuild the first layer that does not fit, and repeat until it runs."""
    repaired = set()
    while True:
        passed_input_layer = False

        def check(name, layer, x):
            nonlocal passed_input_layer
            size = _needed_size(layer, x)
            if size is not None and (name in repaired or (input_only and passed_input_layer)):
                raise AblationError(
                    f"{context}: layer {_label(name, layer)} gets input of shape {tuple(x.shape)}"
                    + ("; only the input layer is rebuilt" if input_only else
                       "; it was rebuilt already, so its inputs vary in size"))
            passed_input_layer |= isinstance(layer, _WIDTH_CHANGERS)
            if size is not None:
                raise _Mismatch(name, layer, size)

        try:
            output = _dry_run(model, example_input, check, f"{context} cannot be repaired")
        except _Mismatch as m:
            log.info("rebuilding %s for input size %s", m.name, m.size)
            _set_module(model, m.name, _rebuild(m.name, m.layer, m.size))
            repaired.add(m.name)
            continue
        if expected is not None and _shapes(output) != expected:
            raise AblationError(f"{context} changes the model's output shape from {expected} "
                                f"to {_shapes(output)}")
        return


def _dry_run(model, example_input, check, context):
    """One forward pass in eval mode without grad; a failure names the innermost layer."""
    stack, handles = [], []
    training = {m: m.training for m in model.modules()}

    def enter(name):
        def hook(module, args, kwargs):
            stack.append((name, module, args, kwargs))
            if check is not None and isinstance(module, _REPAIRABLE) and args \
                    and isinstance(args[0], torch.Tensor):
                check(name, module, args[0])
        return hook

    def leave(module, args, output):
        stack.pop()

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(enter(name), with_kwargs=True))
            handles.append(module.register_forward_hook(leave))
        model.eval()
        with torch.no_grad():
            return _call(model, example_input)
    except (_Mismatch, AblationError):
        raise
    except Exception as error:
        if not stack:
            raise AblationError(f"{context}: {type(error).__name__}: {error}") from error
        name, module, args, kwargs = stack[-1]
        raise AblationError(
            f"{context}: layer {_label(name, module)} fails on input of shape "
            f"{_shapes((*args, *kwargs.values()))}: {type(error).__name__}: {error}") from error
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in training.items():
            module.training = mode


def _call(model, example_input):
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)


def _needed_size(layer, x):
    """The input size `layer` must be rebuilt for, or None if `x` fits (or cannot be judged)."""
    if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
        return None
    if isinstance(layer, nn.LayerNorm):
        k = len(layer.normalized_shape)
        size = tuple(x.shape[-k:]) if x.dim() >= k else None
        return size if size is not None and size != tuple(layer.normalized_shape) else None
    if isinstance(layer, nn.Linear) and x.dim() >= 1:
        have, size = layer.in_features, x.shape[-1]
    elif isinstance(layer, _CONVS) and x.dim() in (len(layer.kernel_size) + 1, len(layer.kernel_size) + 2):
        have, size = layer.in_channels, x.shape[-len(layer.kernel_size) - 1]
    elif isinstance(layer, _BATCHNORMS) and x.dim() >= 2:
        have, size = layer.num_features, x.shape[1]
    else:
        return None
    return size if size != have else None


# --- repair without an example: follow widths through Sequential stacks -----

_SAME = "same"


def _repair_by_widths(original, names, modules):
    """Repair each Sequential stack holding a removal; refuse width changes we cannot fix."""
    originals = dict(original.named_modules())
    stacks = set()
    for name in names:
        parent_name, _ = _split(name)
        if not isinstance(originals[parent_name], nn.Sequential):
            widths = _io(originals[name])
            if widths not in (None, _SAME) and None not in widths and widths[0] != widths[1]:
                raise AblationError(
                    f"replacing {_label(name, originals[name])} by Identity changes the width from "
                    f"{widths[0]} to {widths[1]}; pass example_input so the next layer can be rebuilt")
            continue
        while parent_name and isinstance(originals[_split(parent_name)[0]], nn.Sequential):
            parent_name = _split(parent_name)[0]
        stacks.add(parent_name)
    for name in sorted(stacks):
        width_in = _input_width(originals[name])
        width_out, consistent = _walk(originals[name], width_in, repair=False)
        if not consistent:   # our width model does not describe this stack: leave it alone
            log.info("cannot follow widths through %s; pass example_input to repair it", name or "the model")
            continue
        new_out, _ = _walk(modules[name], width_in, repair=True, path=name)
        if None not in (width_out, new_out) and new_out != width_out:
            where = f"the output width of {name!r}" if name else "the model's output width"
            raise AblationError(f"removing {names} changes {where} from {width_out} to {new_out}"
                                + ("; pass example_input so the next layer can be rebuilt" if name else ""))


def _io(layer):
    """(input width, output width) of a layer, _SAME if it keeps the width, None if unknown."""
    lazy = isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params()
    if isinstance(layer, _SAME_WIDTH):
        return _SAME
    if isinstance(layer, nn.Linear):
        return (None if lazy else layer.in_features), layer.out_features
    if isinstance(layer, _CONVS):
        return (None if lazy else layer.in_channels), layer.out_channels
    if isinstance(layer, _BATCHNORMS):
        return layer.num_features, layer.num_features
    if isinstance(layer, nn.LayerNorm) and len(layer.normalized_shape) == 1:
        return layer.normalized_shape[0], layer.normalized_shape[0]
    if isinstance(layer, nn.Sequential):
        return _input_width(layer), _walk(layer, _input_width(layer), repair=False)[0]
    return None


def _input_width(seq):
    for layer in seq:
        widths = _io(layer)
        if widths is not _SAME:
            return None if widths is None else widths[0]
    return None


def _walk(seq, width, repair, path=""):
    """Follow the width through `seq`; returns (output width, whether every known width matched).

    With repair=True, layers whose input width no longer matches are rebuilt in place.
    """
    consistent = True
    for key, layer in list(seq._modules.items()):
        name = f"{path}.{key}" if path else key
        if isinstance(layer, nn.Sequential):
            width, ok = _walk(layer, width, repair, name)
            consistent &= ok
            continue
        widths = _io(layer)
        if widths is _SAME:
            continue
        if widths is None:
            width = None
            continue
        if width is not None and widths[0] is not None and width != widths[0]:
            consistent = False
            if repair:
                log.info("rebuilding %s for input size %s", name, width)
                layer = _rebuild(name, layer, (width,) if isinstance(layer, nn.LayerNorm) else width)
                setattr(seq, key, layer)
                widths = _io(layer)
        width = widths[1]
    return width, consistent


def _repair_first_layers(model, size):
    for name, layer in list(model.named_modules()):
        widths = _io(layer)
        if not isinstance(layer, _REPAIRABLE) or widths in (None, _SAME):
            continue
        if widths[0] is not None and widths[0] != size:
            _set_module(model, name, _rebuild(
                name, layer, (size,) if isinstance(layer, nn.LayerNorm) else size))
        if isinstance(layer, _WIDTH_CHANGERS):
            return
    raise AblationError(f"{type(model).__name__} has no Linear or Conv layer to take "
                        f"{size} input features")


# --- rebuilding ----------------------------------------------------------------

def _rebuild(name, layer, size):
    """A fresh layer of the same class and hyper-parameters, for input size `size`."""
    ref = next((t for t in (*layer.parameters(), *layer.buffers()) if t.is_floating_point()), None)
    factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    cls = type(layer)
    try:
        if isinstance(layer, nn.Linear):
            new = cls(size, layer.out_features, bias=layer.bias is not None, **factory)
        elif isinstance(layer, _CONVS):
            # keep as much of the grouping as the new size allows (depthwise stays depthwise)
            groups = math.gcd(layer.groups, size, layer.out_channels)
            new = cls(size, layer.out_channels, layer.kernel_size, stride=layer.stride,
                      padding=layer.padding, dilation=layer.dilation, groups=groups,
                      bias=layer.bias is not None, padding_mode=layer.padding_mode, **factory)
        elif isinstance(layer, _BATCHNORMS):
            new = cls(size, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                      track_running_stats=layer.track_running_stats, **factory)
        elif isinstance(layer, nn.LayerNorm):
            new = cls(size, eps=layer.eps, elementwise_affine=layer.elementwise_affine,
                      bias=layer.bias is not None, **factory)
        else:
            raise TypeError(f"no rule to rebuild {cls.__name__}")
    except (TypeError, ValueError) as error:
        raise AblationError(f"cannot rebuild layer {_label(name, layer)} for input size {size}: "
                            f"{error}") from error
    new.train(layer.training)
    return new


# --- small helpers -------------------------------------------------------------

def _set_module(model, name, module):
    parent, key = _split(name)
    setattr(model.get_submodule(parent), key, module)


def _label(name, module):
    what = repr(module) if not module._modules else type(module).__name__
    return f"{name!r} ({what})" if name else f"<model> ({what})"


def _shapes(obj):
    """Shapes of the tensors in a (nested) input or output, for comparisons and messages."""
    if isinstance(obj, torch.Tensor):
        return tuple(obj.shape)
    if isinstance(obj, (list, tuple)):
        return tuple(_shapes(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _shapes(v) for k, v in obj.items()}
    return type(obj).__name__

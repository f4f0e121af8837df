"""The method registry: SSPrompt and every baseline is a `Method`, registered by name as timm registers
models; `ssp-train --method NAME` and packs name it.

Adding a method is one module and one registration; no shared file changes:

    @dataclass
    class MineOptions:
        scale: float = option(1.0, "Initial scale of the semantic prompts.", min=0.0)
        freeze: bool = option(False, "Keep the semantic prompts fixed.")

    register_method(Method("mine", "my prompts", prompts=build_mine, options=MineOptions))

Its options dataclass holds the method's own settings: each field, with a default and a help
text (`option`), becomes an ssp-train option (`--mine-scale`, `--mine-freeze`; `option_prefix`
chooses the prefix), and `ModelConfig.method_options` and the pack keep its values as a dict.

What a method may change of the model: four parts (base.py), each built by one builder
`(MethodInputs, options) -> part`; all but the prompts default to today's behaviour.

(a) `prompts` -> PromptSource: the spatial prompts SAM's decoder gets and the semantic prompts
    the classifier gets (required).
(b) `encoder_adapter` -> EncoderAdapter: modules applied to SAM's image encoder, e.g. LoRA
    (default: none, SAM's frozen encoder as is).
(c) `decoding` -> Decoding: how the decoder runs over the prompts, e.g. self-prompting
    iterations, or an adapter refining the prompts from the image before the decoder (PA-SAM)
    (default: one pass).
(d) `extra_loss` -> ExtraLoss: a term added to the training loss, e.g. self-distillation
    (default: none).

Everything a part names in `learned()` trains and is stored in packs and checkpoints under that
name. Callers ask a method what it has instead of testing its name: `starts_from` (what training
starts from, for the before/after line), `plot` (a picture of what it learned, or None).

Not wired yet, for the methods that will need it: training runs on cached encoder outputs, so
an encoder adapter that learns is refused (train_pack), and the exported graph bakes in the
default single-pass decoding.

Methods outside this package register the same way from a module named by an entry point of
the group `ssprompt.methods`; importing `ssprompt.train.methods` imports them. Such a module
imports from `methods.base` and `methods.registry` (model.py imports the registry).
"""

from __future__ import annotations

import math
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import config_from_dict
from .base import (Decoding, EncoderAdapter, ExtraLoss, MethodInputs, PromptSource, default_decoding,
                   default_encoder_adapter, default_extra_loss)

__all__ = ["Method", "METHODS", "register_method", "get_method", "option", "NoOptions", "option_types"]

OPTION_TYPES = (str, int, float, bool)  # what an option field may hold (or None besides)


def option(default: Any, help: str, *, choices: Sequence[str] | None = None, min: float | None = None,
           max: float | None = None) -> Any:
    """A field of a method's options dataclass: its default, its help text, and the values it takes
    (`choices`, or a `min` / `max` for numbers), checked from the command line and from a dict alike."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None,
                                            "min": min, "max": max})


@dataclass
class NoOptions:
    """A method without options of its own."""


@dataclass(frozen=True)
class Method:
    name: str  # ssp-train --method NAME; packs record it
    description: str  # one phrase for ssp-train --help
    prompts: Callable[[MethodInputs, Any], PromptSource]  # (a)
    options: type = NoOptions  # the method's own options: a dataclass of `option` fields
    option_prefix: str | None = None  # ssp-train's options are --PREFIX-FIELD; None: the name, "": --FIELD
    encoder_adapter: Callable[[MethodInputs, Any], EncoderAdapter] = default_encoder_adapter  # (b)
    decoding: Callable[[MethodInputs, Any], Decoding] = default_decoding  # (c)
    extra_loss: Callable[[MethodInputs, Any], ExtraLoss] = default_extra_loss  # (d)
    starts_from: str = "default prompts"  # what training starts from, as the held-out before/after line says
    plot: Callable[[Any, Path], Path] | None = None  # (pack, png path) -> path: a picture of what it learned

    def option_flag(self, name: str) -> str:
        """The command-line name of option field `name`: --PREFIX-FIELD."""
        prefix = self.name if self.option_prefix is None else self.option_prefix
        return "--" + "-".join(part for part in (prefix, name.replace("_", "-")) if part)

    def parse_options(self, values: dict) -> Any:
        """The options dataclass from a dict (ModelConfig.method_options, a pack's), every value checked.

        Raises:
          TypeError: a value not of its field's type.
          ValueError: an option this method does not have, or a value it refuses.
        """
        if not isinstance(values, dict):
            raise TypeError(f"method_options must be a dict, got {type(values).__name__}")
        known = {f.name for f in fields(self.options)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"--method {self.name} has no option {', '.join(unknown)} "
                             f"(it has {', '.join(sorted(known)) or 'none'})")
        options = config_from_dict(self.options, values)
        for f in fields(options):
            _check_value(self.option_flag(f.name), getattr(options, f.name), f.metadata)
        return options


def _check_value(flag: str, value: Any, metadata) -> None:
    if value is None:
        return
    if metadata.get("choices") and value not in metadata["choices"]:
        raise ValueError(f"{flag} must be one of {', '.join(metadata['choices'])}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = metadata.get("min"), metadata.get("max")
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            bounds = [f"{word} {bound}" for word, bound in (("at least", low), ("at most", high)) if bound is not None]
            raise ValueError(f"{flag} must be a finite number {' and '.join(bounds)}".rstrip() + f", got {value}")


def option_types(options: type) -> dict[str, tuple[type, bool]]:
    """Each option field's value type and whether it may be None, from the dataclass's annotations.

    Raises:
      TypeError: not a dataclass, a field without a default, or a type other than str, int, float, bool (or X | None).
    """
    if not (isinstance(options, type) and is_dataclass(options)):
        raise TypeError(f"method options must be a dataclass, got {options!r}")
    hints = typing.get_type_hints(options)
    types = {}
    for f in fields(options):
        arms = typing.get_args(hints[f.name]) or (hints[f.name],)
        kinds = [arm for arm in arms if arm is not type(None)]
        if len(kinds) != 1 or kinds[0] not in OPTION_TYPES:
            raise TypeError(f"{options.__name__}.{f.name}: an option is str, int, float or bool (or X | None), "
                            f"not {hints[f.name]}")
        if f.default is MISSING:
            raise TypeError(f"{options.__name__}.{f.name}: an option needs a default")
        types[f.name] = (kinds[0], len(kinds) < len(arms))
    return types


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make `method` choosable by name (ssp-train --method NAME); its options dataclass is checked here.

    Raises:
      ValueError: the name is taken.
      TypeError: its options are not a dataclass of option fields, or their defaults are refused.
    """
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered already (by {METHODS[method.name].prompts.__module__})")
    option_types(method.options)
    method.parse_options({})  # the defaults must pass the method's own checks
    flags = {other.option_flag(f.name): other.name for other in METHODS.values() for f in fields(other.options)}
    for f in fields(method.options):
        if method.option_flag(f.name) in flags:
            raise ValueError(f"method {method.name!r}: option {method.option_flag(f.name)} is --method "
                             f"{flags[method.option_flag(f.name)]}'s already; choose another option_prefix")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method `name`.

    Raises:
      ValueError: no method of that name (the message lists the registered ones).
    """
    if name not in METHODS:
        raise ValueError(f"method {name!r} is not a registered method ({', '.join(METHODS)})")
    return METHODS[name]


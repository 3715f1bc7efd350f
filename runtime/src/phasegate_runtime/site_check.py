"""The site observer: measures, at every forward pass, what reached the residual stream after block L.

Parity of three libraries proves little if none of them steered (a shared decoder failing to add the delta
would pass), or if one steered only the prompt. So every unit is watched: for each forward pass the observer
takes block L's own output, *before* any library's hook or intervention touches it, and the hidden states that
block L+1 (or the final norm, for the last block) then receives. The steered residual minus the unsteered one
must equal ``delta`` exactly (``raw + delta`` in the model dtype, the addition every method performs) at every
position of every pass; in unsteered work (baseline, activation reads) it must be zero.

Why not a forward hook: pyvene removes every forward hook on the model at each call, and a hook would see the
output after other hooks had changed it. The observer wraps the blocks' ``forward`` instead, once, when the
model is loaded, before any library wraps the model (nnsight keeps an instance ``forward`` it finds as the
body of its controller, so the observer runs inside nnsight's interventions; forward hooks run after
``forward``).

Every other hand-off between consecutive blocks is checked too (nothing may be added there), and block L's own
output over each whole prompt batch is fingerprinted: steering must leave it bit-identical to the unsteered
run's, so a method that edits the residual inside or before block L is caught even where the hand-off at L
matches. A fast unit's read stops after block L (:func:`.site.blocks_through`): the final norm then receives
block L's output, and that is the hand-off checked at the site, in a watch that allows it (unsteered reads
only); elsewhere a pass that skips blocks leaves the site unchecked and fails. All bookkeeping of the decode
steps stays on the device (running maxima and counters updated in place; inside decode steps each hand-off's
check is one compiled kernel, :func:`.fused.site_error`), so it is recorded into the decoder's CUDA graph like
every other kernel of a step and replayed with it: replayed steps are measured, not assumed.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import fused
from .site import block_hidden, decoder, decoder_layers

_OBSERVER = "_phasegate_site_observer"


@dataclass(frozen=True)
class SiteCheck:
    """What one watched stretch of work did at the site.

    ``forward_passes``: passes through block L; ``checked_passes``: passes whose next module received the
    residual (they must be equal); ``positions``: batch rows x sequence positions checked; ``max_abs_error``:
    the largest ``|received - (raw + delta)|`` over all of them (``delta`` = 0 when unsteered);
    ``elsewhere_max_abs_error``: the same between every other pair of consecutive blocks, where nothing may be
    added; ``prefill_fingerprints``: sha256 of block L's own output in each pass over a whole prompt batch (a
    prefill or a read), in order: steering must leave them equal to the unsteered run's, so an edit inside or
    before block L shows even where the hand-off at L looks right.
    """

    forward_passes: int
    checked_passes: int
    positions: int
    max_abs_error: float
    elsewhere_max_abs_error: float
    prefill_fingerprints: tuple[str, ...]

    @property
    def exact(self) -> bool:
        return (
            self.forward_passes > 0
            and self.checked_passes == self.forward_passes
            and self.max_abs_error == 0.0
            and self.elsewhere_max_abs_error == 0.0
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "forward_passes": self.forward_passes,
            "checked_passes": self.checked_passes,
            "positions": self.positions,
            "max_abs_error": self.max_abs_error,
            "elsewhere_max_abs_error": self.elsewhere_max_abs_error,
            "prefill_fingerprints": list(self.prefill_fingerprints),
            "exact": self.exact,
        }


def _fingerprint(hidden: torch.Tensor) -> str:
    return hashlib.sha256(hidden.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes()).hexdigest()


class _Watch:
    def __init__(
        self, layer: int, delta: torch.Tensor | None, device: torch.device, stops_after_site: bool = False
    ) -> None:
        self.layer = layer
        self.stops_after_site = stops_after_site
        # Ordinary tensors (not inference tensors, whoever watches), updated in place by every pass: the
        # compiled check is specialised on the kind, so every watch must hand it the same kind.
        with torch.inference_mode(False):
            self.delta = None if delta is None else delta.detach().clone()
            self.site_max = torch.zeros(1, dtype=torch.float32, device=device)
            self.elsewhere_max = torch.zeros(1, dtype=torch.float32, device=device)
            self.counts = torch.zeros(3, dtype=torch.long, device=device)  # passes, checked passes, positions
        self.raw: dict[int, torch.Tensor] = {}
        self.last_block = -1
        self.zero: torch.Tensor | None = None
        # Block L's outputs over whole prompt batches, hashed when the watch ends: hashing each at once would
        # copy it to the host in the middle of its pass, which waits for the device and stalls the launches.
        self.to_fingerprint: list[torch.Tensor] = []

    def saw_output(self, index: int, output: Any) -> None:
        # A copy: pyvene writes its intervention back into the block's output tensor in place.
        hidden = block_hidden(output).detach().clone()
        self.raw[index] = hidden
        self.last_block = index
        if index != self.layer:
            return
        self.counts[0].add_(1)
        # A whole prompt batch (decode steps have one position); never a capture's tensor (the graph owns it).
        capturing = hidden.is_cuda and torch.cuda.is_current_stream_capturing()
        if hidden.shape[1] > 1 and not capturing:
            self.to_fingerprint.append(hidden)  # a copy of its own, never written again

    def saw_input(self, source: int, received: torch.Tensor) -> None:
        """``received``: what the module after block ``source`` was called with (for the final norm, see
        :meth:`SiteObserver._before_norm`)."""
        raw = self.raw.pop(source, None)
        if raw is None or raw.shape != received.shape:
            return  # not the residual of a watched pass; at the site, the pass counts then disagree
        at_site = source == self.layer
        if self.zero is None or self.zero.dtype != raw.dtype:
            with torch.inference_mode(False):
                self.zero = torch.zeros(raw.shape[-1], dtype=raw.dtype, device=raw.device)
        # One delta argument for every hand-off (zero where nothing may be added: raw + 0 is raw), so the
        # compiled check inside decode steps has one form, not one per kind of hand-off.
        delta = self.delta if at_site and self.delta is not None else self.zero
        fused.site_error(received.detach(), raw, delta, self.site_max if at_site else self.elsewhere_max)
        if at_site:
            self.counts[1].add_(1)
            self.counts[2].add_(received.shape[0] * received.shape[1])

    def result(self) -> SiteCheck:
        passes, checked, positions = (int(v) for v in self.counts.tolist())
        at_site, elsewhere = (float(v) for v in torch.cat([self.site_max, self.elsewhere_max]).tolist())
        fingerprints = tuple(_fingerprint(hidden) for hidden in self.to_fingerprint)
        return SiteCheck(passes, checked, positions, at_site, elsewhere, fingerprints)


class SiteObserver:
    """Installed once per model (:func:`install_site_observer`); inert unless :meth:`watch` is active."""

    def __init__(self, model: nn.Module) -> None:
        layers = decoder_layers(model)
        self._n_layers = len(layers)
        self._watch: _Watch | None = None
        for index, block in enumerate(layers):
            self._wrap(block, index)
        norm = getattr(decoder(model), "norm", None)
        if not isinstance(norm, nn.Module):
            raise TypeError(f"cannot find the final norm of {type(model).__name__}")
        self._wrap(norm, self._n_layers)

    def _wrap(self, module: nn.Module, index: int) -> None:
        original: Callable[..., Any] = module.forward

        @functools.wraps(original)
        def forward(*args: Any, **kwargs: Any) -> Any:
            watch = self._watch
            if watch is not None and index > 0:
                received = args[0] if args else kwargs.get("hidden_states")
                if isinstance(received, torch.Tensor):
                    source = index - 1 if index < self._n_layers else self._before_norm(watch)
                    watch.saw_input(source, received)
            output = original(*args, **kwargs)
            if watch is not None and index < self._n_layers:
                watch.saw_output(index, output)
            return output

        module.forward = forward

    def _before_norm(self, watch: _Watch) -> int:
        """The block whose output the final norm must receive: the last block, or block L itself where the
        watch allows passes that stop after the site (a fast unit's reads); any other pass that skipped blocks
        leaves the site's hand-off unchecked, and the check fails."""
        if watch.stops_after_site and watch.last_block == watch.layer:
            return watch.layer
        return self._n_layers - 1

    @contextmanager
    def watch(
        self, layer: int, delta: torch.Tensor | None, device: torch.device, stops_after_site: bool = False
    ) -> Iterator[list[SiteCheck]]:
        """Watch block ``layer`` while the body runs; the yielded list then holds the :class:`SiteCheck`.

        ``delta``: what every library must have added (None: nothing may be added). ``stops_after_site``:
        passes may end after block ``layer`` (:func:`.site.blocks_through`); unsteered work only."""
        if not 0 <= layer < self._n_layers:
            raise ValueError(f"layer {layer} out of range")
        if self._watch is not None:
            raise RuntimeError("the site observer is already watching")
        if stops_after_site and delta is not None:
            raise ValueError("steered work runs every block: only unsteered reads may stop after the site")
        watch = _Watch(layer, delta, device, stops_after_site)
        self._watch = watch
        out: list[SiteCheck] = []
        try:
            yield out
        finally:
            self._watch = None
        out.append(watch.result())


def install_site_observer(model: nn.Module) -> SiteObserver:
    observer = getattr(model, _OBSERVER, None)
    if isinstance(observer, SiteObserver):
        return observer
    observer = SiteObserver(model)
    setattr(model, _OBSERVER, observer)
    return observer


def site_observer(model: nn.Module) -> SiteObserver:
    observer = getattr(model, _OBSERVER, None)
    if not isinstance(observer, SiteObserver):
        raise RuntimeError("the model was loaded without the site observer (models.load_model installs it)")
    return observer

"""Perplexity on non-overlapping windows of an evaluation text."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class PerplexityResult:
    """exp(mean NLL) over every predicted token of ``windows`` windows of ``seqlen`` tokens.

    ``perplexity`` is NaN or inf when the model's losses are; it is never clipped to a number.
    """

    perplexity: float
    windows: int
    seqlen: int
    predicted_tokens: int
    mean_nll: float
    stream_tokens: int


def cut_windows(stream: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``seqlen`` tokens; the trailing partial window is dropped."""
    count = stream.numel() // seqlen
    if count == 0:
        raise ValueError(
            f"the evaluation text has {stream.numel()} tokens, fewer than one window of seqlen={seqlen}"
        )
    if max_windows is not None:
        count = min(count, max_windows)
    return stream[: count * seqlen].reshape(count, seqlen)


def perplexity(
    model: torch.nn.Module,
    stream: torch.Tensor,
    seqlen: int,
    max_windows: int | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
) -> PerplexityResult:
    """Perplexity of ``model`` on ``stream``; each window predicts its tokens 2..seqlen."""
    windows = cut_windows(stream, seqlen, max_windows)
    total_nll = torch.zeros((), dtype=torch.float64)
    predicted = 0
    model.eval()
    with torch.no_grad():
        for start in tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", mininterval=5):
            batch = windows[start : start + batch_size].to(device)
            logits = model(batch, use_cache=False).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += nll.double().cpu()
            predicted += batch[:, 1:].numel()
    mean_nll = float(total_nll) / predicted
    value = math.exp(mean_nll) if math.isfinite(mean_nll) and mean_nll < 700 else (
        math.inf if mean_nll == mean_nll else math.nan
    )
    if not math.isfinite(value):
        log.warning("perplexity is %s (mean NLL %s)", value, mean_nll)
    return PerplexityResult(value, windows.shape[0], seqlen, predicted, mean_nll, stream.numel())

"""One optimization loop shared by every tiny component: AdamW, warmup + cosine, tqdm."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from tqdm import tqdm


def optimize(
    params: Iterable[torch.nn.Parameter],
    loss_at: Callable[[int], torch.Tensor],
    steps: int,
    lr: float,
    desc: str,
    weight_decay: float = 0.0,
    after_step: Callable[[int], None] | None = None,
) -> float:
    """Run `steps` AdamW updates of `loss_at(step)`; returns the mean loss of the last 10%.

    The learning rate warms up over the first 5% of steps, then follows a cosine to 5% of `lr`.
    """
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)

    def scale(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, scale)
    tail: list[float] = []
    bar = tqdm(range(steps), desc=desc, mininterval=2.0)
    for step in bar:
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if after_step is not None:
            after_step(step)
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return sum(tail) / len(tail)

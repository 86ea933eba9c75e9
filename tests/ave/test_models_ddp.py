"""The contrastive loss under DDP gathers every rank's rows, as the official all_gather does:
on 2 gloo processes it equals the 1-process loss of the whole batch, and each rank's gradient
reaches its own rows only."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tasks.ave.losses import contrastive_loss


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    aud = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    return img, aud, torch.tensor([False, True, False, False, False, True])


def _worker(rank: int, port: int, out: dict) -> None:
    torch.set_num_threads(1)  # forked: keep clear of the parent's OpenMP pool
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    img, aud, is_bg = _batch()
    rows = slice(3 * rank, 3 * rank + 3)
    local = img[rows].clone().requires_grad_()
    loss = contrastive_loss(local, aud[rows], is_bg[rows])
    loss.backward()
    out[rank] = (loss.item(), local.grad.clone())
    dist.destroy_process_group()


def test_contrastive_loss_gathers_across_ranks():
    img, aud, is_bg = _batch()
    full_img = img.clone().requires_grad_()
    expected = contrastive_loss(full_img, aud, is_bg)
    expected.backward()
    with mp.Manager() as manager:
        out = manager.dict()
        port = 29000 + os.getpid() % 1000
        mp.start_processes(_worker, args=(port, out), nprocs=2, join=True, start_method="fork")
        results = dict(out)
    for rank in (0, 1):
        loss, grad = results[rank]
        assert abs(loss - expected.item()) < 1e-6
        # each rank differentiates the same global loss w.r.t. its own rows only
        torch.testing.assert_close(grad, full_img.grad[3 * rank : 3 * rank + 3])

"""SwAV: Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", NeurIPS 2020, arXiv:2006.09882."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathssl.models.backbones import Backbone
from pathssl.ssl import dist
from pathssl.ssl.base import METHODS, SSLMethod, collapse_std, multi_crop_apply
from pathssl.ssl.heads import MLPHead
from pathssl.ssl.losses import sinkhorn_knopp


@METHODS.register("swav")
class SwAV(SSLMethod):
    """SwAV with multi-crop: every crop -> backbone ``(B, E)`` -> projector -> L2-normalised
    ``(B, D)`` -> scores against ``num_prototypes`` unit prototypes ``(B, K)``. Codes for each
    global crop come from Sinkhorn-Knopp (``epsilon``, ``sinkhorn_iterations``) over the global
    batch; every other crop predicts them (softmax at ``temperature``).

    Prototypes are renormalised after every optimiser step and their gradients dropped during
    the first ``freeze_prototypes_steps`` steps.

    Feature queue (the paper's small-batch setting; its batch-256 recipe: 3840 embeddings per
    global crop against 3000 prototypes, from epoch 15): with ``queue_length`` > 0,
    from step ``queue_start_step`` on, the codes of global crop ``i`` are computed by Sinkhorn
    on ``[queue_i; batch]`` (queued embeddings scored against the current prototypes) and only
    the batch's rows are kept. The queue ``(2, queue_length, D)`` holds the normalised
    projections of the global crops of past steps (the whole global batch, every rank the
    same), oldest first; ``queue_filled`` rows (the newest) are valid, rows not yet filled are
    left out (the reference code waits for a full queue; here its filled part is used from the
    start). Embeddings are enqueued FIFO in ``on_step_end``, so a step the loop skipped (NaN
    guard) enqueues nothing. Across ``W`` processes rank ``r`` takes the ``r``-th of ``W`` equal
    parts of the filled rows into the distributed Sinkhorn (at most ``W - 1`` rows left over),
    so together the ranks assign ``[queue; global batch]`` once. Both are buffers: checkpointed and resumed exactly.

    Views: 2 global ``(B, 3, H, W)`` then ``n_local_views`` local ``(B, 3, h, w)``.
    """

    queue: Tensor
    queue_filled: Tensor

    def __init__(
        self,
        backbone: Backbone,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_steps: int = 313,
        n_local_views: int = 6,
        queue_length: int = 0,
        queue_start_step: int = 0,
    ) -> None:
        super().__init__(backbone)
        if queue_length < 0 or queue_start_step < 0:
            raise ValueError(
                f"queue_length and queue_start_step must be >= 0, got {queue_length}, "
                f"{queue_start_step}"
            )
        self.projector = MLPHead(self.embed_dim, proj_hidden_dim, proj_dim, num_layers=2)
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.freeze_prototypes_steps = freeze_prototypes_steps
        self.n_local_views = n_local_views
        self.queue_length = queue_length
        self.queue_start_step = queue_start_step
        self.register_buffer("queue", torch.zeros(2, queue_length, proj_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._pending: list[Tensor] = []
        self.normalize_prototypes()

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def queue_active(self) -> bool:
        """The queue is on (``queue_length`` > 0) and step ``queue_start_step`` is reached."""
        return self.queue_length > 0 and int(self.global_step) >= self.queue_start_step

    def queued(self, crop: int) -> Tensor:
        """The filled rows of global crop ``crop``'s queue ``(n, D)``, oldest first."""
        n = int(self.queue_filled)
        return self.queue[crop, self.queue_length - n :]

    def _queue_share(self, crop: int) -> Tensor:
        """This rank's part of :meth:`queued` for the distributed Sinkhorn ``(n // W, D)``."""
        rows = self.queued(crop)
        part = rows.shape[0] // dist.world_size()
        return rows[dist.rank() * part : (dist.rank() + 1) * part]

    @torch.no_grad()
    def codes(self, scores: Tensor, crop: int, use_queue: bool) -> Tensor:
        """Sinkhorn codes ``(B, K)`` for global crop ``crop``'s scores ``(B, K)``; with
        ``use_queue`` computed on ``[queue; batch]`` and the batch's rows returned."""
        s = scores.detach().float()
        if use_queue and int(self.queue_filled) > 0:
            queued = F.linear(self._queue_share(crop), self.prototypes.weight.detach()).float()
            s = torch.cat([queued, s])
        q = sinkhorn_knopp(s, self.epsilon, self.sinkhorn_iterations)
        return q[q.shape[0] - scores.shape[0] :]

    def forward(self, views: list[Tensor]) -> dict[str, Tensor]:
        self.check_views(views, 2)
        feats = multi_crop_apply(self.backbone, views)
        z = F.normalize(self.projector(torch.cat(feats)), dim=1)
        scores = self.prototypes(z).chunk(len(views))  # one (B, K) per crop
        use_queue = self.queue_active()
        loss = z.new_zeros(())
        for i in range(2):
            q = self.codes(scores[i], i, use_queue)
            sub = z.new_zeros(())
            for v, s in enumerate(scores):
                if v != i:
                    sub = sub - (q * F.log_softmax(s / self.temperature, dim=1)).sum(1).mean()
            loss = loss + sub / (len(views) - 1)
        if use_queue and self.training:
            # replaced, not appended: the embeddings of a step the loop skipped (NaN guard, no
            # on_step_end) never reach the queue
            b = scores[0].shape[0]
            crops = [dist.gather_no_grad(z[i * b : (i + 1) * b].detach().float()) for i in (0, 1)]
            self._pending = [torch.stack(crops)]
        return {"loss": loss / 2, "embed_std": collapse_std(feats[0])}

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor) -> None:
        """Append ``embeddings`` ``(2, n, D)`` (one row block per global crop) at the new end of
        the queue, dropping the oldest rows (FIFO)."""
        n = min(embeddings.shape[1], self.queue_length)
        if n == 0:
            return
        new = embeddings[:, embeddings.shape[1] - n :].to(self.queue.dtype)
        self.queue.copy_(torch.cat([self.queue[:, n:], new], dim=1))
        self.queue_filled.copy_((self.queue_filled + n).clamp(max=self.queue_length))

    def on_after_backward(self, step: int) -> None:
        if step < self.freeze_prototypes_steps:
            for p in self.prototypes.parameters():
                p.grad = None

    def on_step_end(self, step: int, max_steps: int) -> None:
        super().on_step_end(step, max_steps)
        self.normalize_prototypes()
        for embeddings in self._pending:
            self.enqueue(embeddings)
        self._pending.clear()

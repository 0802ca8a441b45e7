"""Several processes for ``reflection-separation separate``: one share of the inputs per process, one summary.

Launched with ``accelerate launch -m reflection_separation.cli separate ...`` or ``torchrun -m ...`` (or any launcher
that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), each process takes every
``WORLD_SIZE``-th input starting at its ``RANK``, on ``cuda:LOCAL_RANK`` when CUDA is there. The split is over all
inputs in their fixed order, not over those still to do, so that the processes agree on it even while the others
are writing outputs; a resumed run skips the done ones within each share. At the end the processes add up their
counts over ``torch.distributed`` (gloo, on the CPU; the group the launcher's script already set up if there is one)
and the first prints the summary.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

Item = TypeVar("Item")

SUMMARY_TIMEOUT = timedelta(days=7)
"""How long the processes that finished wait for the others at the end (their shares may take unequally long)."""


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the processes of one ``separate`` run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Processes":
        """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by ``torchrun`` and ``accelerate launch``); one
        process when they are not set. Raises ``ValueError`` on values that do not fit together."""
        try:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as exc:
            raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({exc}).") from None
        if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
            raise ValueError(
                f"RANK={rank} and WORLD_SIZE={world_size} do not fit (need 0 <= RANK < WORLD_SIZE); launch with "
                "`torchrun` or `accelerate launch`, or unset them for one process."
            )
        if world_size > 1 and not dist.is_initialized() and not (os.environ.get("MASTER_ADDR") and
                                                                  os.environ.get("MASTER_PORT")):
            raise ValueError(
                "WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT to add up the processes' counts at the end; "
                "`torchrun` and `accelerate launch` set them."
            )
        return cls(rank=rank, world_size=world_size, local_rank=local_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[Item]) -> list[Item]:
        """This process's inputs: every ``world_size``-th, starting at ``rank`` (round robin keeps the shares of a
        sorted folder alike in content and size)."""
        return list(items[self.rank :: self.world_size])

    def device(self, device: str) -> str:
        """``"auto"`` and ``"cuda"`` mean this process's GPU, ``cuda:LOCAL_RANK``, with several processes; any other
        device (``"cpu"``, ``"cuda:1"``) is taken as given."""
        if self.world_size > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return device

    def total(self, counts: Sequence[int]) -> list[int]:
        """``counts`` added up over the processes (every process gets the totals); waits for all of them."""
        if self.world_size == 1:
            return list(counts)
        created = not dist.is_initialized()
        if created:
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size, timeout=SUMMARY_TIMEOUT)
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=SUMMARY_TIMEOUT)
        gathered: list[list[int] | None] = [None] * self.world_size
        dist.all_gather_object(gathered, list(counts), group=group)
        if created:
            dist.destroy_process_group()
        return [sum(column) for column in zip(*gathered)]

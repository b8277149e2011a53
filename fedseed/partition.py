"""Split a dataset across clients: IID, Dirichlet over labels, pathological, by domain.

Every scheme is a pure function of (labels, domains, number of clients, seed,
scheme parameters): the same call gives the same shards on every machine, so a
client's shard is reproducible from (dataset, partition, client id) and never
has to travel. Every sample lands in exactly one shard.

- ``iid``: a seeded permutation dealt round-robin.
- ``dirichlet``: each client's class mix ``q ~ Dir(alpha · 1)`` (Hsu et al.
  2019), equal shard sizes; small alpha, few classes per client.
- ``pathological``: sorted by label, cut into ``classes_per_client x clients``
  shards, each client takes that many shards (McMahan et al. 2017).
- ``domain``: clients are dealt to the data's natural domains round-robin
  (VADER: movies, tweets, Amazon, NYT), each domain split IID among its
  clients: real disparity, not a synthetic one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedseed.errors import ConfigError

PARTITIONS = ("iid", "dirichlet", "pathological", "domain")


@dataclass(frozen=True)
class PartitionConfig:
    scheme: str = "iid"  # iid | dirichlet | pathological | domain (the data's own domains)
    num_clients: int = 10  # in a simulation config: set at the top level
    seed: int = 0  # the split's draw
    alpha: float = 0.1  # dirichlet: concentration (smaller: more label skew)
    classes_per_client: int = 1  # pathological: labels per client
    min_size: int = 2  # dirichlet: refuse a split that would leave a client fewer samples

    def __post_init__(self) -> None:
        if self.scheme not in PARTITIONS:
            raise ConfigError(f"unknown partition {self.scheme!r}; choose one of {', '.join(PARTITIONS)}")
        if self.num_clients < 1:
            raise ConfigError(f"num_clients must be >= 1, got {self.num_clients}")
        if not (self.alpha > 0 and np.isfinite(self.alpha)):
            raise ConfigError(f"alpha must be a positive number, got {self.alpha}")
        if self.classes_per_client < 1:
            raise ConfigError(f"classes_per_client must be >= 1, got {self.classes_per_client}")
        if self.min_size < 1:
            raise ConfigError(f"min_size must be >= 1, got {self.min_size}")


def partition(
    labels: Sequence[int], config: PartitionConfig, domains: Sequence[str] | None = None
) -> list[list[int]]:
    """Sample indices of each client's shard (each ascending), for ``config.num_clients`` clients."""
    n, k = len(labels), config.num_clients
    if k > n:
        raise ConfigError(f"{k} clients but only {n} samples: every client needs at least one")
    rng = np.random.Generator(np.random.PCG64(config.seed))
    if config.scheme == "iid":
        shards = _deal(rng.permutation(n), k)
    elif config.scheme == "dirichlet":
        shards = _dirichlet(np.asarray(labels), k, config.alpha, config.min_size, rng)
    elif config.scheme == "pathological":
        shards = _pathological(np.asarray(labels), k, config.classes_per_client, rng)
    else:
        shards = _by_domain(domains, k, rng)
    return [sorted(int(i) for i in s) for s in shards]


def _deal(order: np.ndarray, k: int) -> list[list[int]]:
    return [list(order[c::k]) for c in range(k)]


def _dirichlet(
    labels: np.ndarray, k: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[list[int]]:
    """Hsu et al. (2019): client ``c`` draws its class mix ``q_c ~ Dir(alpha · 1)``.

    Clients get (near) equal sizes, ``n // k`` or one more, so nobody is left
    empty even with two classes and many clients (the per-class split of the
    paper's code needs ~10 classes for that). Each client takes its samples
    class by class as ``q_c`` asks, from what is left; a class that has run out
    is replaced by the client's next most wanted class with samples left.
    """
    if k * min_size > len(labels):
        raise ConfigError(f"{k} clients x min_size {min_size} exceeds {len(labels)} samples")
    classes = np.unique(labels)
    supply = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    sizes = [len(labels) // k + (1 if c < len(labels) % k else 0) for c in range(k)]
    shards: list[list[int]] = []
    for size in sizes:
        mix = rng.dirichlet(np.full(len(classes), alpha))
        wanted = rng.multinomial(size, mix)
        shard: list[int] = []
        for c, count in zip(classes, wanted, strict=True):
            take = min(int(count), len(supply[int(c)]))
            shard += [supply[int(c)].pop() for _ in range(take)]
        for c in classes[np.argsort(-mix, kind="stable")]:  # top up from the most wanted classes left
            while len(shard) < size and supply[int(c)]:
                shard.append(supply[int(c)].pop())
        shards.append(shard)
    return shards


def _pathological(labels: np.ndarray, k: int, per_client: int, rng: np.random.Generator) -> list[list[int]]:
    pieces = k * per_client
    if pieces > len(labels):
        raise ConfigError(f"{k} clients x {per_client} classes each needs >= {pieces} samples")
    by_label = np.argsort(labels, kind="stable")
    chunks = np.array_split(by_label, pieces)
    owner = rng.permutation(pieces)
    shards: list[list[int]] = [[] for _ in range(k)]
    for piece, chunk in zip(owner, chunks, strict=True):
        shards[piece % k].extend(chunk)
    return shards


def _by_domain(domains: Sequence[str] | None, k: int, rng: np.random.Generator) -> list[list[int]]:
    if not domains or not any(domains):
        raise ConfigError("partition 'domain' needs data tagged with domains (e.g. dataset vader-all)")
    names = sorted(set(domains))
    if k < len(names):
        raise ConfigError(f"partition 'domain' needs at least one client per domain: {len(names)} ({names})")
    tags = np.asarray(domains)
    shards: list[list[int]] = [[] for _ in range(k)]
    for d, name in enumerate(names):
        clients = list(range(d, k, len(names)))  # clients d, d + D, d + 2D, ... hold domain d
        members = rng.permutation(np.flatnonzero(tags == name))
        for j, part in enumerate(_deal(members, len(clients))):
            shards[clients[j]].extend(part)
    return shards


def describe(shards: Sequence[Sequence[int]], labels: Sequence[int]) -> list[dict[int, int]]:
    """Per client: label -> count (for logs and tests)."""
    out = []
    for shard in shards:
        counts: dict[int, int] = {}
        for i in shard:
            counts[labels[i]] = counts.get(labels[i], 0) + 1
        out.append(counts)
    return out

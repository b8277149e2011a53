"""Partitions: deterministic, every sample exactly once, the heterogeneity each scheme promises."""

from __future__ import annotations

import pytest

from fedseed import data
from fedseed.errors import ConfigError
from fedseed.partition import PARTITIONS, PartitionConfig, describe, partition

LABELS = [i % 3 for i in range(300)]
DOMAINS = ["movies", "tweets", "nyt", "amazon"] * 75


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_every_sample_lands_in_exactly_one_shard_deterministically(scheme: str) -> None:
    config = PartitionConfig(scheme=scheme, num_clients=8, seed=3, alpha=0.1, classes_per_client=2)
    shards = partition(LABELS, config, DOMAINS)
    again = partition(LABELS, config, DOMAINS)
    other_seed = partition(LABELS, PartitionConfig(scheme, 8, 4, 0.1, 2), DOMAINS)
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(len(LABELS)))
    assert shards == again
    assert shards != other_seed
    assert all(len(s) >= 1 for s in shards) and len(shards) == 8


def test_dirichlet_small_alpha_is_skewed_and_large_alpha_is_balanced() -> None:
    def max_share(alpha: float) -> float:
        counts = describe(partition(LABELS, PartitionConfig("dirichlet", 10, 0, alpha), DOMAINS), LABELS)
        return sum(max(c.values()) / sum(c.values()) for c in counts) / len(counts)

    assert max_share(0.05) > 0.85  # nearly one class per client
    assert max_share(100.0) < 0.45  # close to the 1/3 of an even mix


def test_pathological_gives_each_client_at_most_its_classes() -> None:
    shards = partition(LABELS, PartitionConfig("pathological", 6, 0, classes_per_client=1), DOMAINS)
    assert all(len(c) == 1 for c in describe(shards, LABELS))


def test_domain_partition_gives_each_client_one_domain() -> None:
    shards = partition(LABELS, PartitionConfig("domain", 8, 0), DOMAINS)
    for shard in shards:
        assert len({DOMAINS[i] for i in shard}) == 1
    assert {DOMAINS[shards[c][0]] for c in range(4)} == set(DOMAINS)  # every domain has a client


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (dict(scheme="zipf"), "unknown partition 'zipf'; choose one of iid, dirichlet, pathological, domain"),
        (dict(scheme="dirichlet", alpha=0.0), "alpha must be a positive number"),
        (dict(scheme="dirichlet", alpha=-1.0), "alpha must be a positive number"),
        (dict(num_clients=0), "num_clients must be >= 1"),
    ],
)
def test_bad_partition_settings_are_clear_errors(config: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PartitionConfig(**config)  # type: ignore[arg-type]


def test_more_clients_than_samples_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="11 clients but only 10 samples"):
        partition(LABELS[:10], PartitionConfig("iid", 11), DOMAINS[:10])


def test_domain_partition_needs_domains_and_enough_clients() -> None:
    with pytest.raises(ConfigError, match="needs data tagged with domains"):
        partition(LABELS, PartitionConfig("domain", 4), None)
    with pytest.raises(ConfigError, match="at least one client per domain: 4"):
        partition(LABELS, PartitionConfig("domain", 3), DOMAINS)


def test_real_datasets_load_with_domains_and_labels() -> None:
    vader = data.load_dataset("vader-all")
    assert {e.domain for e in vader} == {"movies", "tweets", "amazon", "nyt"}
    bbc = data.load_dataset("bbcnews")
    assert len(bbc) == 2225 and sorted({e.label for e in bbc}) == [0, 1, 2, 3, 4]
    assert {e.domain for e in bbc} == set(data.BBC_LABELS)
    with pytest.raises(ConfigError, match="unknown dataset 'imdb'; choose one of vader-movies"):
        data.load_dataset("imdb")

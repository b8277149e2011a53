"""Edge clients: the gRPC client (``fedseed client``) hosting a Flower ``ClientApp``, and the
Flower ``ServerApp`` behind ``fedseed simulate --engine flower``. It imports fedseed's core and
never the server.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fedseed.errors import ConfigError

# The Flower release fedseed is built and tested against (pyproject.toml pins it); any patch
# release of its series is accepted, since Flower changes its Message API between minor releases.
FLOWER_VERSION = "1.42.0"
FLOWER_SERIES = tuple(int(part) for part in FLOWER_VERSION.split(".")[:2])


def check_flower_version(found: str | None = None) -> None:
    """One line for a Flower outside the pinned series, before anything of it is used."""
    if found is None:
        try:
            found = version("flwr")
        except PackageNotFoundError:
            raise ConfigError("Flower (flwr) is not installed; run scripts/install.sh") from None
    series = tuple(int(part) for part in found.split(".")[:2] if part.isdigit())
    if series != FLOWER_SERIES:
        wanted = ".".join(map(str, FLOWER_SERIES))
        raise ConfigError(
            f"fedseed's Flower paths need flwr {wanted}.x, found {found}; "
            f"install the pinned one: pip install 'flwr[simulation]=={FLOWER_VERSION}'"
        )


check_flower_version()

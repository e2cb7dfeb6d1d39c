"""The monitoring mixin as package data: rules, Alertmanager config, thresholds, generator.

One copy of each file, here: the repository's tests, docker-compose and Kubernetes
manifests use them from this folder, and an installed wheel's demo reads the same files
through importlib.resources, which finds them in whatever form the package was installed.
"""

from __future__ import annotations

from importlib import resources

RULE_FILES = ("alerts.rules.yml", "recording.rules.yml")


def shipped(*path: str) -> str:
    """The text of a file of the mixin, e.g. shipped("rules", "alerts.rules.yml")."""
    return resources.files(__name__).joinpath(*path).read_text(encoding="utf-8")


def shipped_rules() -> dict[str, str]:
    """File name → text of every shipped rule file."""
    return {name: shipped("rules", name) for name in RULE_FILES}

"""Package discovery; everything else about the package is in pyproject.toml.

Every sub-package of heatmap_templates is found, so a new wing cannot be left out of a wheel; the CLI's folder
cli/ installs as the package hmt_cli.
"""
from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["heatmap_templates", "heatmap_templates.*"]), "hmt_cli"],
    package_dir={"hmt_cli": "cli"},
)

"""Build script: maps the repository's top-level folders onto ``sparkmim.*`` subpackages.

The package list is computed from the folders themselves, so a module added anywhere below one of
them can never be silently left out of a wheel.
"""
from setuptools import find_namespace_packages, setup

# import name -> folder in the repository
PACKAGE_ROOTS = {
    "sparkmim": "sparkmim",
    "sparkmim.pretrain": "pretrain",
    "sparkmim.downstream_imagenet": "downstream_imagenet",
    "sparkmim.downstream_d2": "downstream_d2",
    "sparkmim.downstream_mmdet": "downstream_mmdet",
    "sparkmim.tools": "tools",
    "sparkmim.benchmarks": "benchmarks",
}


def _packages() -> list:
    packages = []
    for name, folder in PACKAGE_ROOTS.items():
        packages.append(name)
        # namespace discovery also lists the data-only folders (recipes, configs), so that setuptools
        # ships them as declared packages instead of warning about each
        packages.extend(f"{name}.{sub}" for sub in find_namespace_packages(folder, exclude=["*__pycache__*"]))
    return packages


setup(
    packages=_packages(),
    package_dir=PACKAGE_ROOTS,
    package_data={"": ["*.yaml", "*.yml", "*.json", "*.sh", "*.md", "recipes/*", "configs/**/*", "pipelines/*.sh"]},
)

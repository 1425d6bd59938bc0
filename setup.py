"""Packaging that pyproject.toml cannot express; everything else (metadata, dependencies, package data) is there.

The model-card templates live in the repository's top-level ``model_cards/`` folder, where contributors edit them. The
wheel ships them inside the package as ``hf_ext/model_cards/<family>.md``, where
:func:`hf_ext.hub.cards.template_path` finds them once installed: ``package_dir`` maps that one folder outside the
package into it, and pyproject.toml's ``[tool.setuptools.package-data]`` picks up its ``*.md`` files. ``dataset_builders``
is a second top-level package of the same distribution (the CLI's ``--dataset_format rlhf_v`` and the annotation app
read and write its schema). ``make wheel-smoke`` builds the wheel and checks it from a fresh virtualenv.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["hf_ext", "hf_ext.*", "dataset_builders", "dataset_builders.*"]),
        "hf_ext.model_cards",
    ],
    package_dir={"hf_ext.model_cards": "model_cards"},
)

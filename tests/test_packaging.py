"""Ready to publish: the metadata as setuptools reads it, without a deprecation warning. (.ci/run also builds the
wheel and sdist, installs the wheel into a fresh virtual environment and runs the command from it.)"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from digit_recognizer import __version__

ROOT = Path(__file__).resolve().parents[1]
setuptools = pytest.importorskip("setuptools")
if int(setuptools.__version__.split(".")[0]) < 77:
    pytest.skip(f"setuptools {setuptools.__version__} predates licence expressions (PEP 639; 77 or later)",
                allow_module_level=True)


def test_the_metadata_reads_without_warnings():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated field (such as license = { text = ... }) fails here
        dist = apply_configuration(Distribution(), str(ROOT / "pyproject.toml"))
    metadata = dist.metadata
    assert metadata.name == "digit-recognizer" and metadata.version == __version__
    assert metadata.license_expression == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert metadata.classifiers and not any(c.startswith("License ::") for c in metadata.classifiers)
    assert {"Homepage", "Repository", "Issues"} <= set(metadata.project_urls)
    assert dist.package_data == {"digit_recognizer": ["static/*"]}
    assert {"kaggle", "tensorboard", "test"} <= set(dist.extras_require)

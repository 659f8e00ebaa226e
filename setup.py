"""Installs the ``icefall`` library (the recipes under ``egs/`` are scripts, not packages)."""

from pathlib import Path

from setuptools import find_packages, setup


def read_requirements(name: str) -> list:
    lines = (Path(__file__).parent / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="icefall",
    version="0.1.0",
    description="k2-free speech recognition recipes: lhotse data, pruned RNN-T in PyTorch, "
    "streaming Zipformer, sherpa-onnx export",
    python_requires=">=3.10",
    packages=find_packages(include=["icefall", "icefall.*"]),
    package_data={"icefall": ["shared/*.sh"]},
    install_requires=read_requirements("requirements.txt"),
    extras_require={
        "dev": ["pytest", "ruff", "mkdocs"],
        "deploy": ["sherpa-onnx"],
    },
)

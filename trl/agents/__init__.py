"""trl.agents: train any OpenAI-compatible agent with RL in TRL.

This subpackage is installed by the `trl-agents` distribution into upstream TRL's `trl` namespace; it never
changes upstream modules. Heavy dependencies (vLLM, torch, transformers) are imported lazily by the modules that
need them, so `import trl.agents` stays cheap.
"""

__version__ = "0.1.0.dev0"

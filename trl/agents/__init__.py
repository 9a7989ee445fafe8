"""trl.agents: train any OpenAI-compatible agent with RL in TRL.

This subpackage is installed by the `trl-agents` distribution into upstream TRL's `trl` namespace; it never
changes upstream modules. Heavy dependencies (vLLM, torch, transformers) are imported lazily by the modules that
need them, so `import trl.agents` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING


__version__ = "0.1.0.dev0"

# public name -> module that defines it (imported on first use)
_EXPORTS = {
    "AgentRollout": "rollout",
    "DataCollatorForAgentTrajectories": "collator",
    "filter_by_reward": "data",
    "ReplayRollout": "replay",
    "ServerClient": "client",
    "ServerError": "client",
    "SegmentRecord": "trajectory",
    "Trajectory": "trajectory",
    "TurnRecord": "trajectory",
    "WeightSyncCallback": "callbacks",
}

__all__ = [
    "AgentRollout",
    "DataCollatorForAgentTrajectories",
    "ReplayRollout",
    "ServerClient",
    "SegmentRecord",
    "ServerError",
    "Trajectory",
    "TurnRecord",
    "WeightSyncCallback",
    "filter_by_reward",
]

if TYPE_CHECKING:
    from .callbacks import WeightSyncCallback
    from .client import ServerClient, ServerError
    from .collator import DataCollatorForAgentTrajectories
    from .data import filter_by_reward
    from .replay import ReplayRollout
    from .rollout import AgentRollout
    from .trajectory import SegmentRecord, Trajectory, TurnRecord


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trl.agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value

"""code_repair: the coding-agent plugin (agent, sandbox, rewards, data, toy suite, GRPO/SFT scripts, demo).

Installed as the `trl-agents-examples` distribution (`pip install -e examples`, done by `make install`), so its
modules import one another as `code_repair.<module>` and run as `python -m code_repair.<script>` or by path
(`python examples/code_repair/grpo.py`). Not part of the `trl.agents` library: users copy and adapt it.
"""

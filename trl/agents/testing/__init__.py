"""trl.agents.testing: test doubles and helpers for testing code built on trl-agents without a GPU.

* `servers`: `trl vllm-serve-async` on a tiny model with CPU replicas (`serve_async`), with the flags the project's
  own tests use (`SERVE_ARGS`: float32, hermes tool parsing, a small KV cache) and a fixed control token (`API_TOKEN`).
* `standin_replica`: a stand-in for a vLLM replica's weight-transfer side (what cannot run on CPU: vLLM's NCCL
  receive), used by the NCCL layout tests and, with `--device cuda`, by the GPU benchmark.
* `http`: `JSONHandler`, the base of the stdlib HTTP servers of the doubles (here and the example's scripted model).

Not here: fixtures (pytest's live in the project's `tests/conftest.py`), mocks of the engine (tests use the real one).
"""

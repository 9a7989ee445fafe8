"""The `trl vllm-serve-async` server: vLLM replicas as child processes and the recording gateway in front."""

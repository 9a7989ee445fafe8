"""Moving the trainer's weights into the vLLM replicas: what to send (`sources`) and a CPU transport (`shm`)."""

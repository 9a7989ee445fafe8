"""The trl-agents test suite (a package, so test modules import `tests.helpers`)."""

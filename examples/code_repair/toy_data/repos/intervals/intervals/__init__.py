"""Half-open intervals and calendar helpers."""

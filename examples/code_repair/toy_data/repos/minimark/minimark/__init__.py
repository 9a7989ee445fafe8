"""A tiny markdown-ish renderer."""

"""Data: reading benchmark files, rendering prompts (chat templates), tokenising examples,
counting truncation."""

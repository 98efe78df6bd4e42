"""Plumbing shared by the course's numbered steps: one module per concern."""

"""Thin Twisted adapters: bytes to frames for a session, and back."""

"""Tests for o2obroker.wire, the sans-IO layer: plain bytes and objects, no reactor."""

"""Helpers shared by the test modules (imported as ``helpers.*``; test modules never
import each other). ``tests/conftest.py`` holds the fixtures built on them."""

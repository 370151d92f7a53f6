"""The pytest plugin registered under the ``pytest11`` entry point; its fixtures come later.

Loading it must stay cheap: it imports nothing heavy at module level.
"""

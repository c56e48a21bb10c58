"""Adapters for agent frameworks; each module needs its framework, ccexec itself needs none.

- ``ccexec.integrations.autogen``: AutoGen 0.4+ (``autogen_core.code_executor.CodeExecutor``).
- ``ccexec.integrations.ag2``: AG2's classic ``autogen.coding`` executors.
"""

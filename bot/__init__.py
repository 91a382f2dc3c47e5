"""Threadwork: a team's coding agent, in the chat thread.

The core: platform-neutral types, the plugin contract, the engine, configuration and the
database. Nothing here imports a platform SDK, an adapter, a plugin or a worker module.
"""

__version__ = "0.1.0"

"""The service: config, join tokens, keys per source, the join decision, CA, HTTP handlers.

Imports `verifier` and `metrics`; never the agent, the dev tools or the command line.
"""

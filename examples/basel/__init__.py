"""The Basel-I attestation example: read the policy, render a capital-adequacy block.

`policy.load_policy` feeds the policy text to the drafting LLM step; `build.render_block`
turns the attestation the model drafted into a Python module and its unit tests.
"""

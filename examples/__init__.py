"""Example code called by the shipped flows (`pipelines/*.yaml`).

Each python step names `module:function`; the function takes JSON-able keyword arguments
and returns a JSON-able dict whose keys are the step's outputs. Everything here is small,
deterministic and runs offline in seconds.
"""

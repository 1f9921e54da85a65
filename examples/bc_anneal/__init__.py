"""The BC/anneal promotion example: audit demonstrations, clone the behaviour, anneal.

A demonstrator walks a 10 x 10 grid towards a goal; `data/demos.jsonl` records each state
and the action taken (with a few recording errors). `train` fits a linear softmax policy to
it (behaviour cloning), `anneal` fine-tunes it with a cosine-annealed learning rate and
flags a held-out loss that got worse. Pure Python, deterministic, well under a second.
"""

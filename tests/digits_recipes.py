"""The recipe the attacks' slow end-to-end tests share: the main recipe's target and evaluation
model on the embedded digits, one undefended variant, and the attacks under test."""

_BASE = """
seed = 0
device = "cpu"
[data]
use = "digits"
image_size = 16
[target.backbone]
use = "mcnn"
width = 16
[target.train]
epochs = 20
batch_size = 64
optimizer = { name = "adam", lr = 1e-3 }
[[variants]]
name = "none"
defense = { use = "none" }
[[metrics]]
use = "attack-accuracy"
[evaluation.backbone]
use = "scnn"
width = 16
[evaluation.train]
epochs = 15
batch_size = 64
optimizer = { name = "adam", lr = 1e-3 }
"""


def digits_attack_recipe(title: str, attacks: str) -> str:
    """`attacks`: the recipe's `[attacks.NAME]` tables, as TOML."""
    return f'title = "{title}"\n{_BASE}{attacks.strip()}\n'

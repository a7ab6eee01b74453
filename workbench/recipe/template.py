"""The starter recipe `workbench recipes new` prints: every table, commented."""

STARTER_RECIPE = '''\
# A workbench recipe: one experiment, from data to privacy x utility x OOD figures.
# Run:       workbench run this.toml --run-dir runs/mine
# Check:     workbench recipes validate this.toml
# Defaults:  workbench recipes show this.toml   (every value as it will run)
# Components and their params: workbench plugins list

title = "My BiDO experiment"
seed = 0            # data split, initialisation and batch order; CPU runs are deterministic
device = "auto"     # CUDA with bf16 autocast when present, else CPU

[data]              # kind `dataset`; digits is embedded (no download): private 0-4, public 5-9
use = "digits"
image_size = 16

[target.backbone]   # kind `backbone`: mcnn, scnn, vgg16-bn, timm
use = "mcnn"

[target.train]      # the one trainer every defense uses
epochs = 20
batch_size = 64
optimizer = { name = "adam", lr = 1e-3 }
schedule = { name = "constant" }

[[variants]]        # one trained target per variant
name = "none"
defense = { use = "none" }

[[variants]]
name = "bido-hsic"
[variants.defense]  # BiDO: CE + lambda_x sum d(X, Z_j) - lambda_y sum d(Z_j, Y)
use = "bido"
lambda_x = 0.05
lambda_y = 0.5
measure = { use = "hsic", sigma = 5.0 }

[[metrics]]         # kind `metric`
use = "accuracy"
'''

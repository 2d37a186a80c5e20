"""Training side (torch): front-end, models, augmentations, Lightning module, lumen-train, lumen-data.

Importing this package must stay cheap and torch-free; torch is imported by the submodules that need it.
"""

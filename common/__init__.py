"""Plumbing shared by the train_*.py scripts: GLUE data, metrics, launch and checkpoint helpers.

The methods themselves live in the scripts; nothing here knows any of them."""

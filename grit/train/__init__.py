"""GRIT training: config, data, collation and losses (the training loop builds on these).

config.py    TrainConfig (typed dataclasses; YAML/JSON + dotted overrides; saved as train_config.json)
data.py      GritLM JSON-lines readers, hard-negative sampling, deterministic resumable BatchSampler
collate.py   examples -> tensors: embedding ids + text masks, chat ids + assistant-only labels
losses.py    contrastive_loss (InfoNCE, in-batch + hard negatives), next_token_loss (GritLM mixed / token)
"""

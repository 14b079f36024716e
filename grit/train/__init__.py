"""GRIT training: one trainer for embedding, generative and unified instruction tuning.

config.py       TrainConfig (typed dataclasses; YAML/JSON + dotted overrides; saved as train_config.json)
data.py         GritLM JSON-lines readers, hard-negative sampling, deterministic resumable BatchSampler
collate.py      examples -> tensors: embedding ids + text masks, chat ids + assistant-only labels
losses.py       contrastive_loss (InfoNCE, in-batch + hard negatives), next_token_loss (GritLM mixed / token)
batches.py      data files -> samplers -> this process's shard -> collated batches
build.py        the model (full or LoRA via peft), AdamW, LR schedule
step.py         one micro-batch: embedding / generative forward, losses, backward
gradcache.py    GradCache: the full-batch contrastive gradient, embedding a chunk at a time
distributed.py  torchrun data parallel: shards, negatives gathered across processes, gradient averaging
checkpoint.py   resumable checkpoints (weights, optimizer, scheduler, samplers, RNG), written atomically
trainer.py      train(config) -> final model folder: the loop, log.jsonl, progress bar
plot.py         plot_loss(run_dir) -> loss.png
"""
